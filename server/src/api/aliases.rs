//! KeyService's alias calls: CreateAlias, UpdateAlias, DeleteAlias, ListAliases. Moving
//! an alias needs the policy's consent for both keys it leaves and joins.

use hsmd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::ApiError;
use super::convert;
use super::keys::{KeyApi, method, page_size};
use crate::auth::Action;
use crate::auth::KeyFacts;
use crate::keys::{KeyRef, validate_alias};

impl KeyApi {
    pub(super) async fn create_alias_call(
        &self,
        req: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        let call = self.state.call(req, method!("CreateAlias"));
        call.answer(Action::CreateAlias, async |call, grant, r| {
            let key = self.resolve(call, &grant, &r.target_key_id).await?;
            call.event.alias = crate::keys::truncate(&r.alias_name, 300);
            let a = self
                .state
                .blocking(move |m| m.create_alias(&r.alias_name, &key))
                .await?;
            Ok(pb::CreateAliasResponse {
                alias: Some(convert::alias(&a)),
            })
        })
        .await
    }

    pub(super) async fn update_alias_call(
        &self,
        req: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        let call = self.state.call(req, method!("UpdateAlias"));
        call.answer(Action::UpdateAlias, async |call, grant, r| {
            // The key the alias leaves must be the caller's to move, as must the new one.
            let named = validate_alias(&r.alias_name)?;
            self.resolve(call, &grant, &named).await?;
            let key = self.resolve(call, &grant, &r.target_key_id).await?;
            call.event.alias = crate::keys::truncate(&r.alias_name, 300);
            let a = self
                .state
                .blocking(move |m| m.update_alias(&r.alias_name, &key))
                .await?;
            Ok(pb::UpdateAliasResponse {
                alias: Some(convert::alias(&a)),
            })
        })
        .await
    }

    pub(super) async fn delete_alias_call(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let call = self.state.call(req, method!("DeleteAlias"));
        call.answer(Action::DeleteAlias, async |call, grant, r| {
            let named = validate_alias(&r.alias_name)?;
            self.resolve(call, &grant, &named).await?;
            call.event.alias = crate::keys::truncate(&r.alias_name, 300);
            let key = self
                .state
                .blocking(move |m| m.delete_alias(&r.alias_name))
                .await?;
            call.event.key_id = key.to_string();
            Ok(pb::DeleteAliasResponse {})
        })
        .await
    }

    pub(super) async fn list_aliases_call(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let call = self.state.call(req, method!("ListAliases"));
        call.answer(Action::ListAliases, async |call, grant, r| {
            let policy = self.state.auth.policy();
            let key = if r.key_id.is_empty() {
                None
            } else {
                let key = self.resolve(call, &grant, &r.key_id).await?;
                if !policy.may_see(grant.principal(), &KeyFacts::of(&key)) {
                    return Err(ApiError::AccessDenied {
                        principal: grant.principal().into(),
                        action: Action::ListAliases.name(),
                        key: Some(key.id.to_string()),
                    });
                }
                Some(key.id)
            };
            let limit = page_size(r.page_size)?;
            let principal = grant.principal().to_string();
            let (list, next) = self
                .state
                .blocking(move |m| {
                    let (list, next) = m.list_aliases(key, &r.page_token, limit)?;
                    let mut shown = Vec::with_capacity(list.len());
                    for a in list {
                        let k = m.resolve(&KeyRef::Id(a.key_id))?;
                        if policy.may_see(&principal, &KeyFacts::of(&k)) {
                            shown.push(a);
                        }
                    }
                    Ok((shown, next))
                })
                .await?;
            Ok(pb::ListAliasesResponse {
                aliases: list.iter().map(convert::alias).collect(),
                next_page_token: next,
            })
        })
        .await
    }
}
