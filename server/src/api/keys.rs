//! KeyService: key management and random bytes. The other calls of the service live
//! beside it: aliases in `aliases.rs`, Sign/SignStream/Verify in `signing.rs`, the
//! encryption calls in `crypt.rs`, the import calls in `import.rs`, rotation in
//! `rotation.rs`.

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use super::convert;
use super::signing::SignStream;
use super::{ApiError, ApiState, Call, Grant};
use crate::auth::{Action, KeyFacts};
use crate::domain::record::{KeyRecord, Transition};
use crate::encoding::public;
use crate::keys::manager::NewKey;
use crate::keys::{KeyError, validate_alias};
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

/// The KeyService implementation.
#[derive(Clone)]
pub(crate) struct KeyApi {
    pub(super) state: ApiState,
}

impl KeyApi {
    pub(crate) fn new(state: ApiState) -> Self {
        KeyApi { state }
    }

    /// Parses and resolves a key reference the grant allows, noting it in the audit
    /// record.
    pub(super) async fn resolve(
        &self,
        call: &mut Call,
        grant: &Grant,
        named: &str,
    ) -> Result<KeyRecord, ApiError> {
        self.state
            .with_key(call, grant, named, |_, key| Ok(key))
            .await
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
            .filter(|k| policy.may_see(grant.principal(), &KeyFacts::of(k)))
            .collect()
    }
}

pub(super) fn page_size(n: u32) -> Result<usize, ApiError> {
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
                rotation_period_days: Some(r.rotation_period_days).filter(|d| *d != 0),
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

    async fn rotate_key(
        &self,
        req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        self.rotate_key_call(req).await
    }

    async fn enable_key_rotation(
        &self,
        req: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        self.enable_key_rotation_call(req).await
    }

    async fn disable_key_rotation(
        &self,
        req: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        self.disable_key_rotation_call(req).await
    }

    async fn create_alias(
        &self,
        req: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        self.create_alias_call(req).await
    }

    async fn update_alias(
        &self,
        req: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        self.update_alias_call(req).await
    }

    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        self.delete_alias_call(req).await
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        self.list_aliases_call(req).await
    }

    async fn sign(
        &self,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        self.sign_call(req).await
    }

    type SignStreamStream = SignStream;

    async fn sign_stream(
        &self,
        req: Request<tonic::Streaming<pb::SignRequest>>,
    ) -> Result<Response<SignStream>, Status> {
        self.sign_stream_call(req).await
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        self.verify_call(req).await
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
