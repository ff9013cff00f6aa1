//! KeyService encryption calls: Encrypt, Decrypt, GenerateDataKey and
//! GenerateDataKeyWithoutPlaintext (the trait methods in `keys.rs` call these).
//!
//! Plaintexts and data keys stay in `Zeroizing` buffers until they are moved into the
//! response, whose `Drop` wipes them once tonic has encoded it. The audit record gets
//! the SHA-256 of the ciphertext (the input of Decrypt, the output of Encrypt and
//! GenerateDataKey): never the plaintext, nor a hash of it (a hash of a short secret is
//! a dictionary away from the secret).

use hsmd_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::convert::{enc_alg_from_pb, enc_alg_to_pb, spec_from_pb, spec_to_pb};
use super::keys::{KeyApi, method};
use super::{ApiError, Call, Grant};
use crate::audit::record::input_hash;
use crate::auth::Action;
use crate::domain::spec::{EncryptionAlgorithm, KeySpec};
use crate::keys::KeyError;
use crate::keys::crypt::DataKey;

impl KeyApi {
    pub(super) async fn encrypt_call(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = self.state.call(req, method!("Encrypt"));
        // The plaintext is in a wiping buffer from the start, refused call or not.
        let call = call.decode(|mut r| {
            let plaintext = Zeroizing::new(std::mem::take(&mut r.plaintext));
            (r, plaintext)
        });
        call.answer(Action::Encrypt, async |call, grant, (mut r, plaintext)| {
            let aad = std::mem::take(&mut r.aad);
            caller_aad(&aad)?;
            let alg = enc_alg_from_pb(r.encryption_algorithm)?;
            note_algorithm(call, alg);
            let (id, alg, ciphertext) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    let (alg, ct) = m.encrypt(&key, alg, &plaintext, &aad)?;
                    Ok((key.id, alg, ct))
                })
                .await?;
            note_algorithm(call, Some(alg));
            call.event.input_sha256 = input_hash(&ciphertext);
            Ok(pb::EncryptResponse {
                key_id: id.to_string(),
                ciphertext,
                encryption_algorithm: enc_alg_to_pb(alg),
            })
        })
        .await
    }

    pub(super) async fn decrypt_call(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = self.state.call(req, method!("Decrypt"));
        let call = call.note_input(|r| &r.ciphertext);
        call.answer(Action::Decrypt, async |call, grant, r| {
            let alg = enc_alg_from_pb(r.encryption_algorithm)?;
            note_algorithm(call, alg);
            let (ciphertext, aad) = (r.ciphertext, r.aad);
            caller_aad(&aad)?;
            let (id, alg, mut plaintext) = if r.key_id.is_empty() {
                self.decrypt_blob(call, &grant, alg, ciphertext, aad)
                    .await?
            } else {
                self.state
                    .with_key(call, &grant, &r.key_id, move |m, key| {
                        let (alg, pt) = m.decrypt(&key, alg, &ciphertext, &aad)?;
                        Ok((key.id, alg, pt))
                    })
                    .await?
            };
            note_algorithm(call, Some(alg));
            Ok(pb::DecryptResponse {
                key_id: id.to_string(),
                plaintext: std::mem::take(&mut *plaintext),
                encryption_algorithm: enc_alg_to_pb(alg),
            })
        })
        .await
    }

    /// Decrypt without a key id: the blob names its key, which the grant must allow.
    async fn decrypt_blob(
        &self,
        call: &mut Call,
        grant: &Grant,
        alg: Option<EncryptionAlgorithm>,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<(Uuid, EncryptionAlgorithm, Zeroizing<Vec<u8>>), ApiError> {
        if let Some(a) = alg.filter(|a| *a != EncryptionAlgorithm::SymmetricDefault) {
            return Err(KeyError::InvalidArgument(format!(
                "key_id is required for {}: only SYMMETRIC_DEFAULT blobs name their key",
                a.name()
            ))
            .into());
        }
        let g = grant.clone();
        let (id, result) = self
            .state
            .blocking(move |m| {
                let key = match m.blob_key(&ciphertext) {
                    Ok(k) => k,
                    Err(KeyError::KeyNotFound(id)) => return Ok((None, Err(unknown_key(&g, id)))),
                    Err(e) => return Ok((None, Err(ApiError::from(e)))),
                };
                let alg = Some(EncryptionAlgorithm::SymmetricDefault);
                let result = g.check_key(&key).and_then(|()| {
                    m.decrypt(&key, alg, &ciphertext, &aad)
                        .map_err(ApiError::from)
                });
                Ok((Some(key.id), result))
            })
            .await?;
        if let Some(id) = id {
            call.event.key_id = id.to_string();
        }
        let (alg, plaintext) = result?;
        let id = id.ok_or_else(|| KeyError::Internal("blob decrypted without a key".into()))?;
        Ok((id, alg, plaintext))
    }

    pub(super) async fn generate_data_key_call(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let call = self.state.call(req, method!("GenerateDataKey"));
        call.answer(Action::GenerateDataKey, async |call, grant, r| {
            let (id, spec, mut dk) = self
                .data_key(call, &grant, &r.key_id, r.key_spec, r.aad)
                .await?;
            Ok(pb::GenerateDataKeyResponse {
                key_id: id.to_string(),
                key_spec: spec_to_pb(spec),
                plaintext: std::mem::take(&mut *dk.plaintext),
                ciphertext_blob: dk.blob,
            })
        })
        .await
    }

    pub(super) async fn generate_data_key_without_plaintext_call(
        &self,
        req: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let call = self
            .state
            .call(req, method!("GenerateDataKeyWithoutPlaintext"));
        let action = Action::GenerateDataKeyWithoutPlaintext;
        call.answer(action, async |call, grant, r| {
            let (id, spec, dk) = self
                .data_key(call, &grant, &r.key_id, r.key_spec, r.aad)
                .await?;
            Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
                key_id: id.to_string(),
                key_spec: spec_to_pb(spec),
                ciphertext_blob: dk.blob,
            })
        })
        .await
    }

    /// A data key under the named master key; the audit record names the data key spec
    /// as its algorithm and the SHA-256 of the blob as its input hash.
    async fn data_key(
        &self,
        call: &mut Call,
        grant: &Grant,
        key_id: &str,
        key_spec: i32,
        aad: Vec<u8>,
    ) -> Result<(Uuid, KeySpec, DataKey), ApiError> {
        let spec = if key_spec == 0 {
            KeySpec::Aes256
        } else {
            spec_from_pb(key_spec)?
        };
        call.event.algorithm = spec.name().into();
        caller_aad(&aad)?;
        let (id, dk) = self
            .state
            .with_key(call, grant, key_id, move |m, key| {
                Ok((key.id, m.generate_data_key(&key, spec, &aad)?))
            })
            .await?;
        call.event.input_sha256 = input_hash(&dk.blob);
        Ok((id, spec, dk))
    }
}

/// A blob naming a key this hsmd does not have is an invalid blob (altered, or from
/// another hsmd), unless the policy hides which keys exist from this caller.
fn unknown_key(grant: &Grant, id: String) -> ApiError {
    match grant.hide_missing(&id, KeyError::KeyNotFound(id.clone()).into()) {
        ApiError::Key(KeyError::KeyNotFound(_)) => KeyError::InvalidCiphertext(format!(
            "the blob names key {id}, which this hsmd does not have (altered blob, or one from another hsmd)"
        ))
        .into(),
        refused => refused,
    }
}

fn note_algorithm(call: &mut Call, alg: Option<EncryptionAlgorithm>) {
    if let Some(a) = alg {
        call.event.algorithm = a.name().into();
    }
}

/// Refuses the AAD the Kubernetes KMS plugin seals its DEKs with: with it, a KeyService
/// caller could open a Secret's DEK from etcd, or forge one the plugin accepts.
fn caller_aad(aad: &[u8]) -> Result<(), ApiError> {
    if aad == crate::api::kubernetes::PLUGIN_AAD {
        return Err(KeyError::InvalidArgument(
            "this aad is reserved for the Kubernetes KMS plugin's ciphertexts".into(),
        )
        .into());
    }
    Ok(())
}
