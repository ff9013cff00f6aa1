//! KeyService rotation calls: RotateKey, EnableKeyRotation, DisableKeyRotation (the
//! trait methods in `keys.rs` call these). The audit record of a rotation notes the
//! version it made.

use hsmd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert;
use super::keys::{KeyApi, method};
use crate::auth::Action;

impl KeyApi {
    pub(super) async fn rotate_key_call(
        &self,
        req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let call = self.state.call(req, method!("RotateKey"));
        call.answer(Action::RotateKey, async |call, grant, r| {
            let key = self
                .state
                .with_key(call, &grant, &r.key_id, |m, key| Ok(m.rotate(&key)?))
                .await?;
            call.event.note = format!("version {}", key.current_version().version);
            Ok(pb::RotateKeyResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }

    pub(super) async fn enable_key_rotation_call(
        &self,
        req: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        let call = self.state.call(req, method!("EnableKeyRotation"));
        call.answer(Action::EnableKeyRotation, async |call, grant, r| {
            let days = r.rotation_period_days;
            call.event.note = format!("every {days} days");
            let key = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok(m.set_rotation(&key, Some(days))?)
                })
                .await?;
            Ok(pb::EnableKeyRotationResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }

    pub(super) async fn disable_key_rotation_call(
        &self,
        req: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        let call = self.state.call(req, method!("DisableKeyRotation"));
        call.answer(Action::DisableKeyRotation, async |call, grant, r| {
            let key = self
                .state
                .with_key(call, &grant, &r.key_id, |m, key| {
                    Ok(m.set_rotation(&key, None)?)
                })
                .await?;
            Ok(pb::DisableKeyRotationResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }
}
