//! Bring your own key: import tokens, wrapped material unwrapped inside the token,
//! material expiry and deletion (GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial).
//!
//! The rules: only EXTERNAL keys take material; the newest import token of a key is the
//! only valid one, for 24 hours; a key's material is fixed by its first import (the
//! fingerprint of its public key, or of the AES key check block, is kept after deletion
//! and a re-import must match it); the *_SHA_256 wrapping algorithms run in the token
//! where it does OAEP-SHA-256, and otherwise only when `import.allow_host_oaep_sha256`
//! allows the host-side decode.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{KeyError, KeyManager};
use crate::domain::reason::Reason;
use crate::domain::record::KeyRecord;
use crate::domain::spec::{KeyOrigin, KeySpec, KeyState, WrappingAlgorithm};
use crate::encoding::public;
use crate::encoding::{OaepHash, PublicKeyMaterial};
use crate::hsm::OaepPath;
use crate::hsm::import::{ImportRefused, Inspected, OaepUnwrap, Target, Unwrapping};
use crate::store::{ImportToken, ImportedMaterial};

/// How long an import token and its wrapping key are valid, by default and at most.
pub(crate) const IMPORT_TOKEN_LIFETIME_SECS: i64 = 24 * 3600;

/// Every import token starts with this (then the token's 16-byte id).
const TOKEN_PREFIX: &[u8] = b"hsmd-import-token-v1:";

/// `[import]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImportConfig {
    /// `import.token_lifetime_secs`: how long an import token is valid (1..86400,
    /// default 86400 = 24 hours).
    pub(crate) token_lifetime_secs: i64,
    /// `import.allow_host_oaep_sha256` (default false). On a token without OAEP-SHA-256
    /// (SoftHSM2), the RSAES_OAEP_SHA_256 and RSA_AES_KEY_WRAP_SHA_256 wrapping
    /// algorithms are refused unless this is true; then hsmd decodes the OAEP block
    /// itself after the raw RSA operation in the token, so the decoded bytes (the key, or
    /// the ephemeral key that unlocks it) pass through hsmd's memory on their way into a
    /// session object. This weakens the boundary: prefer the *_SHA_1 algorithms.
    pub(crate) allow_host_oaep_sha256: bool,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            token_lifetime_secs: IMPORT_TOKEN_LIFETIME_SECS,
            allow_host_oaep_sha256: false,
        }
    }
}

/// Which import rule refused a request: the import subset of the stable reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImportReason {
    InvalidImportToken,
    ImportTokenWrongKey,
    ImportTokenExpired,
    ImportTokenSuperseded,
    InvalidWrappedKeyMaterial,
    KeyMaterialSpecMismatch,
    KeyMaterialMismatch,
    InvalidValidTo,
    AlgorithmNotAllowed,
    PublicKeyMismatch,
}

impl ImportReason {
    /// The stable reason.
    pub(crate) fn reason(self) -> Reason {
        match self {
            Self::InvalidImportToken => Reason::InvalidImportToken,
            Self::ImportTokenWrongKey => Reason::ImportTokenWrongKey,
            Self::ImportTokenExpired => Reason::ImportTokenExpired,
            Self::ImportTokenSuperseded => Reason::ImportTokenSuperseded,
            Self::InvalidWrappedKeyMaterial => Reason::InvalidWrappedKeyMaterial,
            Self::KeyMaterialSpecMismatch => Reason::KeyMaterialSpecMismatch,
            Self::KeyMaterialMismatch => Reason::KeyMaterialMismatch,
            Self::InvalidValidTo => Reason::InvalidValidTo,
            Self::AlgorithmNotAllowed => Reason::AlgorithmNotAllowed,
            Self::PublicKeyMismatch => Reason::PublicKeyMismatch,
        }
    }

    /// FAILED_PRECONDITION (the request was fine once; the system moved on) rather than
    /// INVALID_ARGUMENT. The status code itself comes from the reason (`Reason::code`);
    /// this states the rule for the tests below.
    #[cfg(test)]
    fn is_precondition(self) -> bool {
        matches!(self, Self::ImportTokenExpired | Self::ImportTokenSuperseded)
    }

    fn err(self, message: impl Into<String>) -> KeyError {
        KeyError::Import {
            reason: self,
            message: message.into(),
        }
    }
}

/// What GetParametersForImport answers.
#[derive(Debug, Clone)]
pub(crate) struct ImportParameters {
    pub(crate) key_id: Uuid,
    pub(crate) algorithm: WrappingAlgorithm,
    pub(crate) wrapping_spec: KeySpec,
    /// The wrapping public key, SubjectPublicKeyInfo DER.
    pub(crate) public_key_der: Vec<u8>,
    pub(crate) import_token: Vec<u8>,
    pub(crate) expire_time: i64,
}

/// What ImportKeyMaterial takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct MaterialImport {
    pub(crate) import_token: Vec<u8>,
    pub(crate) encrypted_key_material: Vec<u8>,
    pub(crate) valid_to: Option<i64>,
    /// SubjectPublicKeyInfo DER, or empty.
    pub(crate) public_key_der: Vec<u8>,
}

impl KeyManager {
    /// How each wrapping algorithm is unwrapped on this token with this config, or why
    /// it is refused (for GetTokenInfo and the start-up log).
    pub(crate) fn import_paths(&self) -> Vec<(WrappingAlgorithm, Result<String, String>)> {
        WrappingAlgorithm::ALL
            .iter()
            .map(|&alg| {
                let path = self.unwrap_path(alg).map(|p| {
                    let oaep = match p {
                        OaepUnwrap::Token(OaepHash::Sha1) => {
                            "C_UnwrapKey with CKM_RSA_PKCS_OAEP (SHA-1) in the token"
                        }
                        OaepUnwrap::Token(OaepHash::Sha256) => {
                            "C_UnwrapKey with CKM_RSA_PKCS_OAEP (SHA-256) in the token"
                        }
                        OaepUnwrap::HostSha256 => {
                            "CKM_RSA_X_509 in the token + OAEP-SHA-256 decode in hsmd (import.allow_host_oaep_sha256: the unwrapped bytes pass through hsmd's memory)"
                        }
                    };
                    if alg.key_wrap() {
                        format!("import: {oaep}, then C_UnwrapKey with CKM_AES_KEY_WRAP_PAD")
                    } else {
                        format!("import: {oaep}")
                    }
                });
                (alg, path.map_err(|e| e.to_string()))
            })
            .collect()
    }

    /// The wrapping algorithms refused because the token lacks a mechanism: (algorithm,
    /// mechanism, why), for `hsmctl token info`.
    pub(crate) fn import_refusals(&self) -> Vec<(String, &'static str, String)> {
        WrappingAlgorithm::ALL
            .iter()
            .filter_map(|&alg| match self.unwrap_path(alg) {
                Err(KeyError::MechanismNotSupported {
                    feature,
                    mechanism,
                    why,
                }) => Some((feature, mechanism, why)),
                _ => None,
            })
            .collect()
    }

    /// The wrapping algorithm GetParametersForImport picks when none is asked for: key
    /// wrap (it carries every spec), with SHA-256 where the token does it itself.
    fn default_wrapping(&self) -> WrappingAlgorithm {
        if self.backend.capabilities().encryption.oaep_sha256 == OaepPath::Token {
            WrappingAlgorithm::RsaAesKeyWrapSha256
        } else {
            WrappingAlgorithm::RsaAesKeyWrapSha1
        }
    }

    /// Refuses an EXTERNAL key of `spec` that no wrapping algorithm could ever fill on
    /// this token (RSA and EC need AES key wrap; AES keys also take plain OAEP), so no
    /// key waits in PENDING_IMPORT forever. The error is the first algorithm's refusal.
    pub(crate) fn check_importable(&self, spec: KeySpec) -> Result<(), KeyError> {
        let mut first = None;
        for &alg in WrappingAlgorithm::ALL {
            if !alg.key_wrap() && spec.is_asymmetric() {
                continue;
            }
            match self.unwrap_path(alg) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(KeyError::MechanismNotSupported {
                feature,
                mechanism,
                why,
            }) => Err(KeyError::MechanismNotSupported {
                feature: format!("EXTERNAL {spec} (no import path: {feature})"),
                mechanism,
                why,
            }),
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// How `alg`'s OAEP block is opened here, or why `alg` is refused.
    fn unwrap_path(&self, alg: WrappingAlgorithm) -> Result<OaepUnwrap, KeyError> {
        let path = self.oaep_path(alg)?;
        if matches!(path, OaepUnwrap::Token(_)) && !self.backend.capabilities().oaep_unwrap {
            return Err(KeyError::MechanismNotSupported {
                feature: format!("import with {alg}"),
                mechanism: "CKM_RSA_PKCS_OAEP",
                why: "the token's OAEP has no CKF_UNWRAP: it cannot unwrap keys with it".into(),
            });
        }
        let objects = self.backend.capabilities().objects;
        if !objects.session_keys || !objects.copy {
            return Err(KeyError::MechanismNotSupported {
                feature: format!("import with {alg}"),
                mechanism: if objects.session_keys {
                    "C_CopyObject"
                } else {
                    "session key objects (CKA_TOKEN false)"
                },
                why: "import unwraps into a session object, checks it, then copies it into a token object".into(),
            });
        }
        Ok(path)
    }

    /// How `alg`'s OAEP block is opened, before the unwrap flag is checked.
    fn oaep_path(&self, alg: WrappingAlgorithm) -> Result<OaepUnwrap, KeyError> {
        let caps = self.backend.capabilities();
        let refuse = |why: String| ImportReason::AlgorithmNotAllowed.err(why);
        if alg.key_wrap()
            && !caps
                .mechanisms
                .iter()
                .any(|c| c.mechanism == "CKM_AES_KEY_WRAP_PAD" && c.supported)
        {
            return Err(KeyError::MechanismNotSupported {
                feature: format!("import with {alg}"),
                mechanism: "CKM_AES_KEY_WRAP_PAD",
                why: "not in the token's mechanism list; RSAES_OAEP_SHA_1 and RSAES_OAEP_SHA_256 carry AES keys only".into(),
            });
        }
        if !alg.sha256() {
            return if caps.encryption.oaep_sha1 {
                Ok(OaepUnwrap::Token(OaepHash::Sha1))
            } else {
                Err(refuse(format!(
                    "{alg} needs RSA-OAEP with SHA-1 in the token, which this token lacks"
                )))
            };
        }
        let sha1 = if alg.key_wrap() {
            WrappingAlgorithm::RsaAesKeyWrapSha1
        } else {
            WrappingAlgorithm::RsaesOaepSha1
        };
        match caps.encryption.oaep_sha256 {
            OaepPath::Token => Ok(OaepUnwrap::Token(OaepHash::Sha256)),
            OaepPath::HostDecode if self.import.allow_host_oaep_sha256 => {
                Ok(OaepUnwrap::HostSha256)
            }
            OaepPath::HostDecode => Err(refuse(format!(
                "{alg} is refused: this token cannot unwrap OAEP with SHA-256, and decoding it in hsmd would put the key material in hsmd's memory (set import.allow_host_oaep_sha256 = true to allow that); use {sha1}, which runs wholly inside the token (RSAES_OAEP_SHA_1 and RSA_AES_KEY_WRAP_SHA_1 both do)"
            ))),
            OaepPath::Unavailable => Err(refuse(format!(
                "{alg} is not offered: this token has no OAEP with SHA-256; use {sha1}"
            ))),
        }
    }

    /// GetParametersForImport: a wrapping key pair in the token and a new import token
    /// for `key`, superseding the older ones (whose wrapping keys are destroyed).
    pub(crate) fn parameters_for_import(
        &self,
        key: &KeyRecord,
        algorithm: Option<WrappingAlgorithm>,
        wrapping_spec: Option<KeySpec>,
    ) -> Result<ImportParameters, KeyError> {
        let _one_at_a_time = self.material_lock();
        let key = &self.reload(key.id)?;
        require_external(key)?;
        if !matches!(
            key.state,
            KeyState::PendingImport | KeyState::Enabled | KeyState::Disabled
        ) {
            return Err(KeyError::KeyState {
                key: key.id,
                state: key.state,
            });
        }
        let algorithm = algorithm.unwrap_or_else(|| self.default_wrapping());
        check_algorithm_for(algorithm, key.spec)?;
        let path = self.unwrap_path(algorithm)?;
        let wrapping_spec = wrapping_spec.unwrap_or(KeySpec::Rsa2048);
        let Some(bits) = wrapping_spec.rsa_bits() else {
            return Err(KeyError::WrappingKeySpecNotOffered(wrapping_spec));
        };
        let token = Uuid::new_v4();
        let public = self.backend.generate_wrapping_key(
            token,
            key.id,
            bits,
            path == OaepUnwrap::HostSha256,
        )?;
        let public_key_der = public::spki_der(&public).map_err(KeyError::Internal)?;
        let now = self.now();
        let row = ImportToken {
            id: token,
            key_id: key.id,
            algorithm: algorithm.name().to_string(),
            wrapping_spec: wrapping_spec.name().to_string(),
            modulus_len: bits as usize / 8,
            create_time: now,
            expire_time: now + self.import.token_lifetime_secs,
            superseded_by: None,
        };
        if let Err(e) = self.store.insert_import_token(&row) {
            if let Err(d) = self.backend.destroy_wrapping_key(token) {
                tracing::error!(error = %d, "rollback of a wrapping key failed");
            }
            return Err(e.into());
        }
        self.destroy_stale_wrapping_keys_locked(now);
        Ok(ImportParameters {
            key_id: key.id,
            algorithm,
            wrapping_spec,
            public_key_der,
            import_token: [TOKEN_PREFIX, token.as_bytes()].concat(),
            expire_time: row.expire_time,
        })
    }

    /// ImportKeyMaterial: checks the token and the request, unwraps in the token, and
    /// records the material; the key becomes ENABLED. A refusal changes nothing.
    pub(crate) fn import_material(
        &self,
        key: &KeyRecord,
        req: &MaterialImport,
    ) -> Result<KeyRecord, KeyError> {
        let _one_at_a_time = self.material_lock();
        let key = &self.reload(key.id)?;
        let now = self.now();
        let token = self.valid_token(key, &req.import_token, now)?;
        require_awaiting_material(key)?;
        if let Some(t) = req.valid_to
            && t <= now
        {
            return Err(ImportReason::InvalidValidTo
                .err(format!("valid_to {} is not in the future", rfc3339(t))));
        }
        let algorithm = WrappingAlgorithm::from_name(&token.algorithm)
            .ok_or_else(|| KeyError::Internal(format!("stored algorithm {}", token.algorithm)))?;
        check_algorithm_for(algorithm, key.spec)?;
        let path = self.unwrap_path(algorithm)?;
        check_length(algorithm, &token, req.encrypted_key_material.len())?;
        let given = given_public_key(key, &req.public_key_der)?;
        let expected = self.store.material_fingerprint(key.id)?;
        let mut fingerprint = None;
        self.creating(key.id, || {
        let (inspected, objects) = self
            .backend
            .import_material(
                &Unwrapping {
                    token: token.id,
                    oaep: path,
                    key_wrap: algorithm.key_wrap(),
                    modulus_len: token.modulus_len,
                    wrapped: &req.encrypted_key_material,
                },
                &Target {
                    id: key.id,
                    spec: key.spec,
                    usage: key.usage,
                    public_key: given.as_ref(),
                },
                |ins| {
                    let fp = material_fingerprint(ins)?;
                    if expected.as_ref().is_some_and(|e| *e != fp) {
                        return Err(format!(
                            "key {} was imported with other material before; a key's material is fixed by its first import, so only the same material can be imported again",
                            key.id
                        ));
                    }
                    fingerprint = Some(fp);
                    Ok(())
                },
            )
            .map_err(import_refusal)?;
        let fingerprint =
            fingerprint.ok_or_else(|| KeyError::Internal("material not fingerprinted".into()))?;
        let material = imported(&inspected, fingerprint, now, req.valid_to)?;
        if let Err(e) = self.store.record_import(key.id, &material) {
            if let Err(d) = self.backend.destroy_objects(objects) {
                tracing::error!(key_id = %key.id, error = %d, "rollback of imported material failed; start-up reconciliation will report it");
            }
            return Err(e.into());
        }
        Ok(())
        })?;
        self.reload(key.id)
    }

    /// DeleteImportedKeyMaterial: destroys the material in the token; the key goes back
    /// to PENDING_IMPORT.
    pub(crate) fn delete_imported_material(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        let _one_at_a_time = self.material_lock();
        let key = &self.reload(key.id)?;
        require_external(key)?;
        match key.state {
            KeyState::Enabled | KeyState::Disabled => {}
            KeyState::PendingImport => {
                return Err(KeyError::InvalidKeyState(format!(
                    "key {} holds no material (PENDING_IMPORT)",
                    key.id
                )));
            }
            state => return Err(KeyError::KeyState { key: key.id, state }),
        }
        self.remove_material(key)
    }

    /// Destroys a key's imported material if its valid-to has still passed (checked
    /// again under the lock: a key deleted and re-imported since the sweep listed it
    /// keeps its new material). `Ok(None)` when there was nothing to expire.
    pub(crate) fn expire_material(&self, id: Uuid) -> Result<Option<KeyRecord>, KeyError> {
        let _one_at_a_time = self.material_lock();
        let key = self.reload(id)?;
        let due = key.valid_to.is_some_and(|t| t <= self.now())
            && matches!(key.state, KeyState::Enabled | KeyState::Disabled);
        if !due {
            return Ok(None);
        }
        self.remove_material(&key).map(Some)
    }

    /// Destroys the material of a key that holds some (checked by the caller, under the
    /// lock) and moves the key back to PENDING_IMPORT.
    fn remove_material(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        self.backend.destroy_key_material(key.id)?;
        self.store.material_deleted(key.id, key.state)?;
        self.reload(key.id)
    }

    /// Ids of the keys whose imported material's valid-to has passed (`expire_material`
    /// reads each again under the lock).
    pub(crate) fn expired_material(&self) -> Result<Vec<Uuid>, KeyError> {
        Ok(self.store.expired_material(self.now())?)
    }

    /// Destroys wrapping keys that no import token names once they have been seen so
    /// for a whole import token lifetime (`import.token_lifetime_secs`): a crash between
    /// making a wrapping key and writing its token's row leaves one. The wait keeps a
    /// replica's key that is between those two steps (milliseconds, or seconds for
    /// RSA-4096 on a slow HSM) safe, whichever hsmd version made it. Wrapping keys never
    /// hold key material, so unlike key objects they are not left for a human. The
    /// first sighting is remembered by this process.
    pub(crate) fn destroy_orphan_wrapping_keys(&self) -> Result<(), KeyError> {
        let _one_at_a_time = self.material_lock();
        let now = self.now();
        let in_token = self.backend.wrapping_key_tokens()?;
        let mut seen = self
            .orphan_wrapping_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut still = std::collections::HashMap::new();
        for token in in_token {
            if self.store.get_import_token(token)?.is_some() {
                continue;
            }
            let first = seen.get(&token).copied().unwrap_or(now);
            if now - first < self.import.token_lifetime_secs {
                still.insert(token, first);
                continue;
            }
            match self.backend.destroy_wrapping_key(token) {
                Ok(()) => {
                    tracing::warn!(import_token = %token, "destroyed a wrapping key no import token names");
                }
                Err(e) => {
                    tracing::error!(import_token = %token, error = %e, "destroying an orphan wrapping key failed; retried next sweep");
                    still.insert(token, first);
                }
            }
        }
        *seen = still;
        Ok(())
    }

    /// Destroys the wrapping keys of superseded and expired import tokens (failures are
    /// logged and retried by the next sweep).
    pub(crate) fn destroy_stale_wrapping_keys(&self) {
        let _one_at_a_time = self.material_lock();
        self.destroy_stale_wrapping_keys_locked(self.now());
    }

    fn destroy_stale_wrapping_keys_locked(&self, now: i64) {
        let stale = match self.store.stale_wrapping_keys(now) {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "listing stale wrapping keys failed"),
        };
        for token in stale {
            let done = self
                .backend
                .destroy_wrapping_key(token)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.store
                        .wrapping_key_destroyed(token)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = done {
                tracing::error!(error = %e, "destroying a stale wrapping key failed; retried next sweep");
            }
        }
    }

    /// The import token named by `bytes`, if it is valid for `key` at `now`.
    fn valid_token(
        &self,
        key: &KeyRecord,
        bytes: &[u8],
        now: i64,
    ) -> Result<ImportToken, KeyError> {
        let invalid = || {
            ImportReason::InvalidImportToken
                .err("import_token is not one this hsmd issued (pass the bytes GetParametersForImport returned, unchanged)")
        };
        let id = bytes
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|b| Uuid::from_slice(b).ok())
            .ok_or_else(invalid)?;
        let token = self.store.get_import_token(id)?.ok_or_else(invalid)?;
        if token.key_id != key.id {
            return Err(ImportReason::ImportTokenWrongKey.err(format!(
                "the import token was issued for another key, not {}; call GetParametersForImport for this key",
                key.id
            )));
        }
        if token.superseded_by.is_some() {
            return Err(ImportReason::ImportTokenSuperseded.err(format!(
                "the import token (issued {}) was superseded by a newer GetParametersForImport for key {}; use the newest token",
                rfc3339(token.create_time),
                key.id
            )));
        }
        if token.expire_time <= now {
            return Err(ImportReason::ImportTokenExpired.err(format!(
                "the import token expired at {}; call GetParametersForImport again",
                rfc3339(token.expire_time)
            )));
        }
        Ok(token)
    }

    fn material_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.material_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn require_external(key: &KeyRecord) -> Result<(), KeyError> {
    if key.origin == KeyOrigin::External {
        return Ok(());
    }
    Err(KeyError::InvalidKeyState(format!(
        "key {} has origin {}: only keys created with origin EXTERNAL take imported material",
        key.id, key.origin
    )))
}

/// RSAES_OAEP_* carry raw AES key bytes only.
fn check_algorithm_for(alg: WrappingAlgorithm, spec: KeySpec) -> Result<(), KeyError> {
    if alg.key_wrap() || !spec.is_asymmetric() {
        return Ok(());
    }
    Err(ImportReason::AlgorithmNotAllowed.err(format!(
        "{alg} wraps raw AES key bytes only; a {spec} key's PKCS#8 material needs RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256"
    )))
}

/// The wrapped material's length must fit the algorithm and the wrapping key, checked
/// before the token is asked (which would only say "general error").
fn check_length(alg: WrappingAlgorithm, token: &ImportToken, len: usize) -> Result<(), KeyError> {
    let k = token.modulus_len;
    let ok = if alg.key_wrap() {
        len >= k + 16 && (len - k).is_multiple_of(8)
    } else {
        len == k
    };
    if ok {
        return Ok(());
    }
    let want = if alg.key_wrap() {
        format!(
            "{k} bytes of OAEP block followed by an RFC 5649 block (a multiple of 8 bytes, at least 16)"
        )
    } else {
        format!("exactly {k} bytes")
    };
    Err(ImportReason::InvalidWrappedKeyMaterial.err(format!(
        "encrypted_key_material is {len} bytes; {alg} with a {} wrapping key takes {want}",
        token.wrapping_spec
    )))
}

/// What identifies material across imports: SHA-256 of the public key (SPKI DER), or of
/// the AES check block.
fn material_fingerprint(ins: &Inspected) -> Result<Vec<u8>, String> {
    match (&ins.public, &ins.check_block) {
        (Some(p), _) => Ok(Sha256::digest(public::spki_der(p)?).to_vec()),
        (None, Some(b)) => Ok(Sha256::digest(b).to_vec()),
        (None, None) => Err("material without public key or check value".into()),
    }
}

fn import_refusal(e: ImportRefused) -> KeyError {
    match e {
        ImportRefused::Unwrap(m) => ImportReason::InvalidWrappedKeyMaterial.err(m),
        ImportRefused::Spec(m) => ImportReason::KeyMaterialSpecMismatch.err(m),
        ImportRefused::PublicKey(m) => ImportReason::PublicKeyMismatch.err(m),
        ImportRefused::Refused(m) => ImportReason::KeyMaterialMismatch.err(m),
        ImportRefused::Hsm(e) => e.into(),
    }
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// An EXTERNAL key may take material only while PENDING_IMPORT; one that holds
/// material must have it deleted first.
fn require_awaiting_material(key: &KeyRecord) -> Result<(), KeyError> {
    require_external(key)?;
    match key.state {
        KeyState::PendingImport => Ok(()),
        KeyState::Enabled | KeyState::Disabled => Err(KeyError::InvalidKeyState(format!(
            "key {} already holds imported material; DeleteImportedKeyMaterial first (a re-import must be the same material)",
            key.id
        ))),
        state => Err(KeyError::KeyState { key: key.id, state }),
    }
}

/// The public key a caller sent with asymmetric material (needed for Ed25519, checked
/// against the material for the others); none for symmetric keys.
fn given_public_key(key: &KeyRecord, der: &[u8]) -> Result<Option<PublicKeyMaterial>, KeyError> {
    if der.is_empty() {
        return Ok(None);
    }
    if !key.spec.is_asymmetric() {
        return Err(KeyError::PublicKeyNotExpected {
            key: key.id,
            spec: key.spec,
        });
    }
    public::from_spki(key.spec, der)
        .map(Some)
        .map_err(KeyError::InvalidPublicKey)
}

/// The store's row of material the token accepted.
fn imported(
    inspected: &Inspected,
    fingerprint: Vec<u8>,
    now: i64,
    valid_to: Option<i64>,
) -> Result<ImportedMaterial, KeyError> {
    Ok(ImportedMaterial {
        fingerprint,
        key_check_value: inspected.check_block.map(|b| hex::encode_upper(&b[..3])),
        public_key_der: inspected
            .public
            .as_ref()
            .map(public::spki_der)
            .transpose()
            .map_err(KeyError::Internal)?,
        import_time: now,
        valid_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(modulus_len: usize) -> ImportToken {
        ImportToken {
            id: Uuid::nil(),
            key_id: Uuid::nil(),
            algorithm: "RSA_AES_KEY_WRAP_SHA_1".into(),
            wrapping_spec: "RSA_2048".into(),
            modulus_len,
            create_time: 0,
            expire_time: 1,
            superseded_by: None,
        }
    }

    #[test]
    fn wrapped_lengths_are_checked_before_the_token() {
        let t = token(256);
        use WrappingAlgorithm::*;
        assert!(check_length(RsaesOaepSha1, &t, 256).is_ok());
        assert!(check_length(RsaesOaepSha1, &t, 255).is_err());
        assert!(check_length(RsaAesKeyWrapSha1, &t, 256 + 40).is_ok());
        assert!(check_length(RsaAesKeyWrapSha1, &t, 256 + 8).is_err());
        assert!(check_length(RsaAesKeyWrapSha1, &t, 256 + 41).is_err());
        let e = check_length(RsaAesKeyWrapSha256, &t, 10).unwrap_err();
        assert_eq!(e.reason(), "INVALID_WRAPPED_KEY_MATERIAL");
    }

    #[test]
    fn oaep_only_algorithms_carry_aes_keys_only() {
        use WrappingAlgorithm::*;
        assert!(check_algorithm_for(RsaesOaepSha1, KeySpec::Aes128).is_ok());
        assert!(check_algorithm_for(RsaAesKeyWrapSha1, KeySpec::EcP256).is_ok());
        let e = check_algorithm_for(RsaesOaepSha256, KeySpec::Rsa2048).unwrap_err();
        assert_eq!(e.reason(), "ALGORITHM_NOT_ALLOWED");
        assert!(e.to_string().contains("RSA_AES_KEY_WRAP_SHA_1"));
    }

    #[test]
    fn token_refusals_have_their_own_status() {
        assert!(ImportReason::ImportTokenExpired.is_precondition());
        assert!(ImportReason::ImportTokenSuperseded.is_precondition());
        assert!(!ImportReason::ImportTokenWrongKey.is_precondition());
        assert!(!ImportReason::KeyMaterialMismatch.is_precondition());
    }

    #[test]
    fn fingerprints_differ_by_material() {
        let a = Inspected {
            public: None,
            check_block: Some([1; 16]),
        };
        let b = Inspected {
            public: None,
            check_block: Some([2; 16]),
        };
        assert_ne!(material_fingerprint(&a), material_fingerprint(&b));
        assert!(
            material_fingerprint(&Inspected {
                public: None,
                check_block: None
            })
            .is_err()
        );
    }
}
