//! KeyService: key management, aliases, signing and random bytes. The encryption calls
//! (Encrypt, Decrypt, GenerateDataKey...) live in `crypt.rs`.

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use super::convert::{self, alg_from_pb, mt_from_pb};
use super::{ApiError, ApiState, Begun, Call, Grant, Identity};
use crate::audit::record::input_hash;
use crate::auth::Action;
use crate::domain::record::{KeyRecord, Transition};
use crate::encoding::public;
use crate::keys::manager::NewKey;
use crate::keys::{KeyError, KeyRef, validate_alias};
use crate::store::KeyFilter;

/// Largest GenerateRandom request.
const MAX_RANDOM: u32 = 1024;
/// Default and largest page sizes of the list calls.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

macro_rules! method {
    ($name:literal) => {
        concat!("/hsmd.v1.KeyService/", $name)
    };
}
pub(super) use method;

/// Requests of one SignStream worked on at once.
const STREAM_WINDOW: usize = 32;

type SignStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SignStreamResponse, Status>> + Send>,
>;

/// The KeyService implementation.
#[derive(Clone)]
pub(crate) struct KeyApi {
    state: ApiState,
}

impl KeyApi {
    pub(crate) fn new(state: ApiState) -> Self {
        KeyApi { state }
    }

    /// The shared state (for the encryption calls in `crypt.rs`).
    pub(super) fn state(&self) -> &ApiState {
        &self.state
    }

    /// Parses and resolves a key reference the grant allows, noting it in the audit
    /// record.
    async fn resolve(
        &self,
        call: &mut Call,
        grant: &Grant,
        named: &str,
    ) -> Result<KeyRecord, ApiError> {
        self.state
            .with_key(call, grant, named, |_, key| Ok(key))
            .await
    }

    /// One Sign request, unary or from a stream (authorized by the bracket).
    async fn sign_one(
        &self,
        call: &mut Call,
        grant: Grant,
        r: pb::SignRequest,
    ) -> Result<pb::SignResponse, ApiError> {
        let alg = alg_from_pb(r.algorithm)?;
        let mt = mt_from_pb(r.message_type)?;
        call.event.algorithm = alg.name().into();
        call.event.message_type = mt.name().into();
        let msg = r.message;
        let (id, signature) = self
            .state
            .with_key(call, &grant, &r.key_id, move |m, key| {
                Ok((key.id, m.sign(&key, alg, mt, &msg)?))
            })
            .await?;
        Ok(pb::SignResponse {
            key_id: id.to_string(),
            algorithm: r.algorithm,
            signature,
        })
    }

    /// Resolves a key and applies a lifecycle transition to it.
    async fn transition(
        &self,
        call: &mut Call,
        grant: &Grant,
        named: &str,
        t: Transition,
        days: u32,
    ) -> Result<KeyRecord, ApiError> {
        self.state
            .with_key(call, grant, named, move |m, key| {
                Ok(m.transition(&key, t, days)?)
            })
            .await
    }

    /// Keeps the keys of a page the caller may see (may do some action on).
    fn visible(&self, grant: &Grant, keys: Vec<KeyRecord>) -> Vec<KeyRecord> {
        let policy = self.state.auth.policy();
        keys.into_iter()
            .filter(|k| policy.may_see(grant.principal(), &facts(k)))
            .collect()
    }
}

/// What the policy sees of a key.
fn facts(k: &KeyRecord) -> crate::auth::KeyFacts<'_> {
    crate::auth::KeyFacts {
        id: Some(k.id),
        aliases: &k.aliases,
        tags: &k.tags,
    }
}

/// The audit record of a Sign request notes the message's hash, refused or not.
fn note_message(call: &mut Call, r: pb::SignRequest) -> pb::SignRequest {
    call.event.input_sha256 = input_hash(&r.message);
    r
}

fn page_size(n: u32) -> Result<usize, ApiError> {
    match n {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(KeyError::InvalidArgument(format!("page_size {n} is over {MAX_PAGE}")).into()),
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let call = self.state.call(req, method!("CreateKey"));
        call.answer(Action::CreateKey, async |call, grant, r| {
            let principal = grant.principal().to_string();
            let mut new = NewKey {
                spec: convert::spec_from_pb(r.spec)?,
                usage: convert::usage_from_pb(r.usage)?,
                origin: convert::origin_from_pb(r.origin)?,
                alias: Some(r.alias).filter(|a| !a.is_empty()),
                description: r.description,
                tags: r.tags.into_iter().collect(),
                idempotency_token: Some(r.idempotency_token).filter(|t| !t.is_empty()),
            };
            call.event.algorithm = new.spec.name().to_string();
            if let Some(a) = &new.alias {
                call.event.alias =
                    validate_alias(a).unwrap_or_else(|_| crate::keys::truncate(a, 300));
            }
            new.tags
                .insert(crate::keys::CREATED_BY_TAG.into(), principal.clone());
            let alias = Some(call.event.alias.as_str()).filter(|a| !a.is_empty());
            grant.check_new_key(alias, &new.tags)?;
            let key = self
                .state
                .blocking(move |m| m.create(&principal, new))
                .await?;
            call.event.key_id = key.id.to_string();
            Ok(pb::CreateKeyResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }

    async fn describe_key(
        &self,
        req: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        let call = self.state.call(req, method!("DescribeKey"));
        call.answer(Action::DescribeKey, async |call, grant, r| {
            let key = self.resolve(call, &grant, &r.key_id).await?;
            Ok(pb::DescribeKeyResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = self.state.call(req, method!("ListKeys"));
        call.answer(Action::ListKeys, async |_, grant, r| {
            let filter = KeyFilter {
                state: (r.state != 0)
                    .then(|| convert::state_from_pb(r.state))
                    .transpose()?,
                usage: (r.usage != 0)
                    .then(|| convert::usage_from_pb(r.usage))
                    .transpose()?,
                alias_prefix: Some(r.alias_prefix).filter(|p| !p.is_empty()).map(|p| {
                    if p.starts_with("alias/") {
                        p
                    } else {
                        format!("alias/{p}")
                    }
                }),
                after: None,
                limit: page_size(r.page_size)?,
            };
            let token = r.page_token;
            let (keys, next) = self.state.blocking(move |m| m.list(filter, &token)).await?;
            let keys = self.visible(&grant, keys);
            Ok(pb::ListKeysResponse {
                keys: keys.iter().map(convert::metadata).collect(),
                next_page_token: next,
            })
        })
        .await
    }

    async fn get_public_key(
        &self,
        req: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        let call = self.state.call(req, method!("GetPublicKey"));
        call.answer(Action::GetPublicKey, async |call, grant, r| {
            let key = self.resolve(call, &grant, &r.key_id).await?;
            if key.state == crate::domain::spec::KeyState::Destroyed {
                return Err(KeyError::KeyState {
                    key: key.id,
                    state: key.state,
                }
                .into());
            }
            let der = key.public_key_der.clone().ok_or_else(|| {
                KeyError::InvalidArgument(format!("{} keys have no public key", key.spec))
            })?;
            let meta = convert::metadata(&key);
            Ok(pb::GetPublicKeyResponse {
                key_id: key.id.to_string(),
                spec: meta.spec,
                usage: meta.usage,
                public_key_pem: public::spki_pem(&der),
                public_key_der: der,
                signing_algorithms: meta.signing_algorithms,
                encryption_algorithms: meta.encryption_algorithms,
            })
        })
        .await
    }

    async fn enable_key(
        &self,
        req: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        let call = self.state.call(req, method!("EnableKey"));
        call.answer(Action::EnableKey, async |call, grant, r| {
            let t = Transition::Enable;
            let k = self.transition(call, &grant, &r.key_id, t, 0).await?;
            Ok(pb::EnableKeyResponse {
                key: Some(convert::metadata(&k)),
            })
        })
        .await
    }

    async fn disable_key(
        &self,
        req: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        let call = self.state.call(req, method!("DisableKey"));
        call.answer(Action::DisableKey, async |call, grant, r| {
            let t = Transition::Disable;
            let k = self.transition(call, &grant, &r.key_id, t, 0).await?;
            Ok(pb::DisableKeyResponse {
                key: Some(convert::metadata(&k)),
            })
        })
        .await
    }

    async fn schedule_key_deletion(
        &self,
        req: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        let call = self.state.call(req, method!("ScheduleKeyDeletion"));
        call.answer(Action::ScheduleKeyDeletion, async |call, grant, r| {
            if crate::domain::record::deletion_window(r.pending_window_days).is_none() {
                call.note_key(&r.key_id, None);
                return Err(KeyError::InvalidDeletionWindow(r.pending_window_days).into());
            }
            let (t, days) = (Transition::ScheduleDeletion, r.pending_window_days);
            let k = self.transition(call, &grant, &r.key_id, t, days).await?;
            Ok(pb::ScheduleKeyDeletionResponse {
                deletion_time: k.deletion_time.map(convert::ts),
                key: Some(convert::metadata(&k)),
            })
        })
        .await
    }

    async fn cancel_key_deletion(
        &self,
        req: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        let call = self.state.call(req, method!("CancelKeyDeletion"));
        call.answer(Action::CancelKeyDeletion, async |call, grant, r| {
            let t = Transition::CancelDeletion;
            let k = self.transition(call, &grant, &r.key_id, t, 0).await?;
            Ok(pb::CancelKeyDeletionResponse {
                key: Some(convert::metadata(&k)),
            })
        })
        .await
    }

    async fn create_alias(
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

    async fn update_alias(
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

    async fn delete_alias(
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

    async fn list_aliases(
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
                if !policy.may_see(grant.principal(), &facts(&key)) {
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
                        if policy.may_see(&principal, &facts(&k)) {
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

    async fn sign(
        &self,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let call = self.state.call(req, method!("Sign")).decode(note_message);
        call.answer(Action::Sign, async |call, grant, r| {
            self.sign_one(call, grant, r).await
        })
        .await
    }

    type SignStreamStream = SignStream;

    /// Each request of the stream goes through the same bracket as a Sign call; only
    /// the answer differs (an item of the stream, carrying the request id).
    async fn sign_stream(
        &self,
        req: Request<tonic::Streaming<pb::SignRequest>>,
    ) -> Result<Response<SignStream>, Status> {
        use futures_util::StreamExt;
        let who = Identity::of(&req);
        let api = self.clone();
        // Requests are worked on concurrently (up to STREAM_WINDOW) and answered in order.
        let answers = req
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .enumerate()
            .map(move |(index, r)| {
                let (api, who) = (api.clone(), who.clone());
                async move {
                    let call = Call::with_identity(&who, method!("SignStream"));
                    let call = Begun::new(&api.state, call, r).decode(note_message);
                    let (request_id, result) = call
                        .recorded(Action::Sign, async |call, grant, r| {
                            api.sign_one(call, grant, r).await
                        })
                        .await;
                    let result = match result {
                        Ok(s) => pb::sign_stream_response::Result::Signature(s),
                        Err(e) => pb::sign_stream_response::Result::Error(pb::StreamError {
                            code: e.code() as i32,
                            reason: e.reason().into(),
                            message: e.to_status().message().to_string(),
                            request_id,
                        }),
                    };
                    Ok(pb::SignStreamResponse {
                        index: index as u64,
                        result: Some(result),
                    })
                }
            });
        let ordered = answers.buffered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(ordered)))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = self.state.call(req, method!("Verify"));
        let call = call.decode(|call, r| {
            call.event.input_sha256 = input_hash(&r.message);
            r
        });
        call.answer(Action::Verify, async |call, grant, r| {
            let alg = alg_from_pb(r.algorithm)?;
            let mt = mt_from_pb(r.message_type)?;
            call.event.algorithm = alg.name().into();
            call.event.message_type = mt.name().into();
            let (msg, sig) = (r.message, r.signature);
            let (id, valid) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok((key.id, m.verify(&key, alg, mt, &msg, &sig)?))
                })
                .await?;
            Ok(pb::VerifyResponse {
                key_id: id.to_string(),
                valid,
            })
        })
        .await
    }

    async fn generate_random(
        &self,
        req: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        let call = self.state.call(req, method!("GenerateRandom"));
        call.answer(Action::GenerateRandom, async |_, _, r| {
            let n = r.length;
            if n == 0 || n > MAX_RANDOM {
                return Err(KeyError::InvalidArgument(format!(
                    "length {n} is outside 1..{MAX_RANDOM}"
                ))
                .into());
            }
            let random = self
                .state
                .blocking(move |m| Ok(m.backend().random(n as usize)?))
                .await?;
            Ok(pb::GenerateRandomResponse { random })
        })
        .await
    }

    async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        self.encrypt_call(req).await
    }

    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        self.decrypt_call(req).await
    }

    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        self.generate_data_key_call(req).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        req: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        self.generate_data_key_without_plaintext_call(req).await
    }

    async fn get_parameters_for_import(
        &self,
        req: Request<pb::GetParametersForImportRequest>,
    ) -> Result<Response<pb::GetParametersForImportResponse>, Status> {
        self.get_parameters_for_import_call(req).await
    }

    async fn import_key_material(
        &self,
        req: Request<pb::ImportKeyMaterialRequest>,
    ) -> Result<Response<pb::ImportKeyMaterialResponse>, Status> {
        self.import_key_material_call(req).await
    }

    async fn delete_imported_key_material(
        &self,
        req: Request<pb::DeleteImportedKeyMaterialRequest>,
    ) -> Result<Response<pb::DeleteImportedKeyMaterialResponse>, Status> {
        self.delete_imported_key_material_call(req).await
    }
}
