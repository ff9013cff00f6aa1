//! KeyService import calls: GetParametersForImport, ImportKeyMaterial and
//! DeleteImportedKeyMaterial (the trait methods in `keys.rs` call these). The audit
//! record names the wrapping algorithm and, for ImportKeyMaterial, the SHA-256 of the
//! wrapped bytes (never anything unwrapped).

use hsmd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{self, spec_from_pb, spec_to_pb, ts};
use super::keys::{KeyApi, method};
use crate::auth::Action;
use crate::domain::spec::WrappingAlgorithm;
use crate::keys::KeyError;
use crate::keys::import::MaterialImport;

/// Prefix of the proto enum value names (proto3 enum scoping).
const WRAPPING_PREFIX: &str = "WRAPPING_ALGORITHM_";

/// Decodes an optional wrapping algorithm (unspecified: hsmd picks).
pub(crate) fn wrapping_from_pb(v: i32) -> Result<Option<WrappingAlgorithm>, KeyError> {
    if v == 0 {
        return Ok(None);
    }
    pb::WrappingAlgorithm::try_from(v)
        .ok()
        .and_then(|a| a.as_str_name().strip_prefix(WRAPPING_PREFIX))
        .and_then(WrappingAlgorithm::from_name)
        .map(Some)
        .ok_or_else(|| {
            KeyError::InvalidArgument(format!(
                "wrapping_algorithm {v} is unknown; one of: {}",
                WrappingAlgorithm::ALL
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Encodes a wrapping algorithm as the proto enum value.
pub(crate) fn wrapping_to_pb(a: WrappingAlgorithm) -> i32 {
    pb::WrappingAlgorithm::from_str_name(&format!("{WRAPPING_PREFIX}{}", a.name()))
        .map(|e| e as i32)
        .unwrap_or(0)
}

impl KeyApi {
    pub(super) async fn get_parameters_for_import_call(
        &self,
        req: Request<pb::GetParametersForImportRequest>,
    ) -> Result<Response<pb::GetParametersForImportResponse>, Status> {
        let call = self.state.call(req, method!("GetParametersForImport"));
        call.answer(Action::GetParametersForImport, async |call, grant, r| {
            let alg = wrapping_from_pb(r.wrapping_algorithm)?;
            let spec = match r.wrapping_key_spec {
                0 => None,
                v => Some(spec_from_pb(v)?),
            };
            if let Some(a) = alg {
                call.event.algorithm = a.name().into();
            }
            let p = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok(m.parameters_for_import(&key, alg, spec)?)
                })
                .await?;
            call.event.algorithm = p.algorithm.name().into();
            Ok(pb::GetParametersForImportResponse {
                key_id: p.key_id.to_string(),
                public_key_pem: crate::encoding::public::spki_pem(&p.public_key_der),
                public_key_der: p.public_key_der,
                import_token: p.import_token,
                parameters_valid_to: Some(ts(p.expire_time)),
                wrapping_algorithm: wrapping_to_pb(p.algorithm),
                wrapping_key_spec: spec_to_pb(p.wrapping_spec),
            })
        })
        .await
    }

    pub(super) async fn import_key_material_call(
        &self,
        req: Request<pb::ImportKeyMaterialRequest>,
    ) -> Result<Response<pb::ImportKeyMaterialResponse>, Status> {
        let call = self.state.call(req, method!("ImportKeyMaterial"));
        let call = call.note_input(|r| &r.encrypted_key_material);
        call.answer(Action::ImportKeyMaterial, async |call, grant, r| {
            let valid_to = match &r.valid_to {
                None => None,
                Some(t) if (0..1_000_000_000).contains(&t.nanos) => Some(
                    // A fraction of a second rounds up: the material never outlives it.
                    t.seconds
                        .checked_add(i64::from(t.nanos > 0))
                        .ok_or_else(|| {
                            KeyError::InvalidArgument("valid_to is out of range".into())
                        })?,
                ),
                Some(_) => {
                    return Err(KeyError::InvalidArgument(
                        "valid_to has nanos outside 0..999999999".into(),
                    )
                    .into());
                }
            };
            let import = MaterialImport {
                import_token: r.import_token,
                encrypted_key_material: r.encrypted_key_material,
                valid_to,
                public_key_der: r.public_key_der,
            };
            let key = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok(m.import_material(&key, &import)?)
                })
                .await?;
            Ok(pb::ImportKeyMaterialResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }

    pub(super) async fn delete_imported_key_material_call(
        &self,
        req: Request<pb::DeleteImportedKeyMaterialRequest>,
    ) -> Result<Response<pb::DeleteImportedKeyMaterialResponse>, Status> {
        let call = self.state.call(req, method!("DeleteImportedKeyMaterial"));
        call.answer(Action::DeleteImportedKeyMaterial, async |call, grant, r| {
            let key = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok(m.delete_imported_material(&key)?)
                })
                .await?;
            Ok(pb::DeleteImportedKeyMaterialResponse {
                key: Some(convert::metadata(&key)),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_algorithms_convert_both_ways() {
        for a in WrappingAlgorithm::ALL {
            assert_eq!(wrapping_from_pb(wrapping_to_pb(*a)).unwrap(), Some(*a));
        }
        assert_eq!(wrapping_from_pb(0).unwrap(), None);
        assert!(wrapping_from_pb(99).is_err());
    }
}
