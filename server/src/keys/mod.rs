//! Key model and rules: specs, usages, states, algorithms, aliases, lifecycle. The
//! `KeyManager` applies them, with the store for metadata and the backend for material.

pub(crate) mod blob;
pub(crate) mod crypt;
pub(crate) mod import;
pub(crate) mod lifecycle;
pub(crate) mod manager;
pub(crate) mod rotation;

use uuid::Uuid;

pub(crate) use manager::KeyManager;

use crate::domain::reason::Reason;
use crate::domain::record::KeyRefused;
use crate::domain::spec::{KeySpec, KeyState, KeyUsage};
use crate::hsm::HsmError;
use crate::store::StoreError;

/// Every way a key operation can fail, in terms a caller can act on. Each variant
/// knows its stable [`Reason`] ([`KeyError::reason`]); the api layer maps it to one gRPC
/// status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// Bad input with no variant of its own (sizes of descriptions and tags, page sizes,
    /// proto enum values...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The requested usage is not one the key spec allows.
    #[error("usage {usage} is not valid for {spec} keys; allowed: {allowed}")]
    UsageNotAllowed {
        usage: KeyUsage,
        spec: KeySpec,
        allowed: String,
    },
    /// A DIGEST message for an algorithm that only signs whole messages (Ed25519).
    #[error("{algorithm} signs RAW messages only (pure Ed25519 has no DIGEST form)")]
    DigestNotOffered { algorithm: &'static str },
    /// A ListKeys page_token this server did not issue.
    #[error("page_token is not one this server issued")]
    InvalidPageToken,
    /// Encrypt with nothing to encrypt.
    #[error("plaintext is empty; give 1..4096 bytes")]
    EmptyPlaintext,
    /// An RSA key needs the encryption algorithm named; `offered` lists the ones this
    /// token offers for the key.
    #[error("encryption_algorithm is required for {spec} keys; one of: {offered}")]
    EncryptionAlgorithmRequired { spec: KeySpec, offered: String },
    /// AAD given with an algorithm that has no AAD (RSA-OAEP).
    #[error("aad is for SYMMETRIC_DEFAULT only ({algorithm} uses an empty OAEP label)")]
    AadNotAllowed { algorithm: &'static str },
    /// AAD over the size limit.
    #[error("aad is {len} bytes; at most {max} are allowed")]
    AadTooLarge { len: usize, max: usize },
    /// GenerateDataKey with a key spec that is no data key spec.
    #[error("data key spec {0} is not offered; use AES_256 or AES_128")]
    DataKeySpecNotOffered(KeySpec),
    /// GetParametersForImport with a wrapping key spec that is not RSA.
    #[error("wrapping_key_spec {0} is not offered; use RSA_2048, RSA_3072 or RSA_4096")]
    WrappingKeySpecNotOffered(KeySpec),
    /// ImportKeyMaterial with a public key for a key that has none (AES).
    #[error("public_key_der is for key pairs; key {key} is {spec}")]
    PublicKeyNotExpected { key: Uuid, spec: KeySpec },
    /// ImportKeyMaterial with a public key that cannot be read for the key's spec.
    #[error("{0}")]
    InvalidPublicKey(String),
    #[error("malformed key id '{0}': expected a UUID or alias/NAME")]
    InvalidKeyId(String),
    #[error("RAW message is {len} bytes; at most {max} are allowed (send a DIGEST instead)")]
    MessageTooLarge { len: usize, max: usize },
    #[error("digest is {got} bytes; {algorithm} needs exactly {expected}")]
    DigestLength {
        algorithm: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("algorithm {algorithm} is not valid for a {spec} key; allowed: {allowed}")]
    AlgorithmNotAllowed {
        algorithm: String,
        spec: &'static str,
        allowed: String,
    },
    #[error("deletion window of {0} days is outside 7..30")]
    InvalidDeletionWindow(u32),
    #[error(
        "invalid alias '{0}': use alias/NAME with NAME of 1..256 characters [A-Za-z0-9/_-], not starting with 'hsmd'"
    )]
    InvalidAlias(String),
    #[error("{0}")]
    UnsupportedKeySpec(String),
    #[error("key {0} not found")]
    KeyNotFound(String),
    #[error("alias {0} not found")]
    AliasNotFound(String),
    #[error("alias {0} already exists")]
    AliasExists(String),
    #[error("key {key} is {state}")]
    KeyState { key: Uuid, state: KeyState },
    #[error("{0}")]
    InvalidKeyState(String),
    #[error("key {key} has usage {usage}; {needed} is needed")]
    WrongUsage {
        key: Uuid,
        usage: &'static str,
        needed: &'static str,
    },
    #[error(
        "idempotency_token was already used for key {0} with other parameters (spec, usage, origin, alias, description or tags); use a new token"
    )]
    IdempotencyMismatch(Uuid),
    #[error("plaintext is {len} bytes; at most {max} are allowed here{hint}")]
    PlaintextTooLarge {
        len: usize,
        max: usize,
        hint: &'static str,
    },
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(String),
    /// Every failure to decrypt a ciphertext, whatever the cause, with one fixed message:
    /// the API must not be a padding oracle.
    #[error("{DECRYPTION_FAILED_MESSAGE}")]
    DecryptionFailed,
    /// A refused import step; `reason` says which rule.
    #[error("{message}")]
    Import {
        reason: import::ImportReason,
        message: String,
    },
    /// RotateKey (or a rotation period) for a key that cannot rotate.
    #[error("{0}")]
    RotationNotSupported(String),
    #[error("rotation period of {0} days is outside 7..365")]
    InvalidRotationPeriod(u32),
    /// A spec or algorithm hsmd offers on other tokens, refused on this one because the
    /// token lacks a mechanism (or key size).
    #[error("{feature} is not available on this token: it needs {mechanism} ({why})")]
    MechanismNotSupported {
        feature: String,
        mechanism: &'static str,
        why: String,
    },
    #[error("token unavailable")]
    Unavailable(String),
    /// The metadata store cannot be reached (PostgreSQL down, or not answering).
    #[error("metadata store unavailable")]
    StoreUnavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl KeyError {
    /// Stable reason (google.rpc.ErrorInfo.reason). The named bad-input variants keep
    /// INVALID_ARGUMENT, the reason they were sent with before they had names.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            KeyError::InvalidArgument(_)
            | KeyError::UsageNotAllowed { .. }
            | KeyError::DigestNotOffered { .. }
            | KeyError::InvalidPageToken
            | KeyError::EmptyPlaintext
            | KeyError::EncryptionAlgorithmRequired { .. }
            | KeyError::AadNotAllowed { .. }
            | KeyError::AadTooLarge { .. }
            | KeyError::DataKeySpecNotOffered(_)
            | KeyError::WrappingKeySpecNotOffered(_)
            | KeyError::PublicKeyNotExpected { .. }
            | KeyError::InvalidPublicKey(_) => Reason::InvalidArgument,
            KeyError::InvalidKeyId(_) => Reason::InvalidKeyId,
            KeyError::MessageTooLarge { .. } => Reason::MessageTooLarge,
            KeyError::DigestLength { .. } => Reason::DigestLengthMismatch,
            KeyError::AlgorithmNotAllowed { .. } => Reason::AlgorithmNotAllowed,
            KeyError::InvalidDeletionWindow(_) => Reason::InvalidDeletionWindow,
            KeyError::InvalidAlias(_) => Reason::InvalidAlias,
            KeyError::UnsupportedKeySpec(_) => Reason::UnsupportedKeySpec,
            KeyError::KeyNotFound(_) => Reason::KeyNotFound,
            KeyError::AliasNotFound(_) => Reason::AliasNotFound,
            KeyError::AliasExists(_) => Reason::AliasExists,
            KeyError::KeyState { state, .. } => match state {
                KeyState::Disabled => Reason::KeyDisabled,
                KeyState::PendingDeletion => Reason::KeyPendingDeletion,
                KeyState::PendingImport => Reason::KeyPendingImport,
                KeyState::Destroyed => Reason::KeyDestroyed,
                KeyState::Enabled => Reason::InvalidKeyState,
            },
            KeyError::InvalidKeyState(_) => Reason::InvalidKeyState,
            KeyError::WrongUsage { .. } => Reason::WrongKeyUsage,
            KeyError::IdempotencyMismatch(_) => Reason::IdempotencyMismatch,
            KeyError::PlaintextTooLarge { .. } => Reason::PlaintextTooLarge,
            KeyError::InvalidCiphertext(_) => Reason::InvalidCiphertext,
            KeyError::DecryptionFailed => Reason::DecryptionFailed,
            KeyError::Import { reason, .. } => reason.reason(),
            KeyError::RotationNotSupported(_) => Reason::RotationNotSupported,
            KeyError::InvalidRotationPeriod(_) => Reason::InvalidRotationPeriod,
            KeyError::MechanismNotSupported { .. } => Reason::MechanismNotSupported,
            KeyError::Unavailable(_) => Reason::TokenUnavailable,
            KeyError::StoreUnavailable(_) => Reason::StoreUnavailable,
            KeyError::Internal(_) => Reason::Internal,
        }
    }
}

/// The one message of every decryption failure.
pub(crate) const DECRYPTION_FAILED_MESSAGE: &str = "decryption failed: the ciphertext does not decrypt with this key and algorithm (wrong key or algorithm, altered or truncated ciphertext, or another AAD)";

impl From<&crate::hsm::probe::Refusal> for KeyError {
    fn from(r: &crate::hsm::probe::Refusal) -> Self {
        KeyError::MechanismNotSupported {
            feature: r.feature.clone(),
            mechanism: r.mechanism,
            why: r.why.clone(),
        }
    }
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AliasExists => KeyError::AliasExists(String::new()),
            StoreError::AliasNotFound => KeyError::AliasNotFound(String::new()),
            StoreError::KeyNotFound => KeyError::KeyNotFound(String::new()),
            StoreError::Conflict => {
                KeyError::InvalidKeyState("the key's state changed meanwhile; retry".into())
            }
            e @ (StoreError::Unavailable(_) | StoreError::Engine(_)) => {
                KeyError::StoreUnavailable(e.to_string())
            }
            e @ (StoreError::Violation(_) | StoreError::Corrupt(_)) => {
                KeyError::Internal(e.to_string())
            }
        }
    }
}

impl From<HsmError> for KeyError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::Unavailable(d) => KeyError::Unavailable(d),
            HsmError::Unsupported(d) => {
                KeyError::UnsupportedKeySpec(format!("not supported by this token: {d}"))
            }
            HsmError::BadInput(d) => {
                KeyError::InvalidArgument(format!("rejected by the token: {d}"))
            }
            HsmError::DecryptFailed => KeyError::DecryptionFailed,
            other => KeyError::Internal(other.to_string()),
        }
    }
}

impl From<KeyRefused> for KeyError {
    fn from(e: KeyRefused) -> Self {
        match e {
            KeyRefused::WrongUsage { key, usage, needed } => {
                KeyError::WrongUsage { key, usage, needed }
            }
            KeyRefused::State { key, state } => KeyError::KeyState { key, state },
        }
    }
}

/// How a request names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRef {
    Id(Uuid),
    Alias(String),
}

impl KeyRef {
    /// Parses "UUID" or "alias/NAME".
    pub(crate) fn parse(s: &str) -> Result<KeyRef, KeyError> {
        if s.starts_with("alias/") {
            return validate_alias(s).map(KeyRef::Alias);
        }
        Uuid::parse_str(s)
            .ok()
            .filter(|_| s.len() == 36)
            .map(KeyRef::Id)
            .ok_or_else(|| KeyError::InvalidKeyId(truncate(s, 80)))
    }
}

/// Normalizes "NAME" or "alias/NAME" to "alias/NAME" and checks it.
pub(crate) fn validate_alias(s: &str) -> Result<String, KeyError> {
    let name = s.strip_prefix("alias/").unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with("hsmd")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b));
    if ok {
        Ok(format!("alias/{name}"))
    } else {
        Err(KeyError::InvalidAlias(truncate(s, 80)))
    }
}

/// Tag every key carries: the principal that created it (set by hsmd, whatever the
/// request said), so policy rules can grant on `tag:created-by=...`.
pub(crate) const CREATED_BY_TAG: &str = "created-by";

/// Caps caller-supplied text echoed into error messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_refs() {
        let id = Uuid::new_v4();
        assert_eq!(KeyRef::parse(&id.to_string()).unwrap(), KeyRef::Id(id));
        assert_eq!(
            KeyRef::parse("alias/pay").unwrap(),
            KeyRef::Alias("alias/pay".into())
        );
        assert!(matches!(
            KeyRef::parse("not-a-key"),
            Err(KeyError::InvalidKeyId(_))
        ));
        assert!(matches!(
            KeyRef::parse(&id.simple().to_string()),
            Err(KeyError::InvalidKeyId(_))
        ));
        assert!(matches!(
            KeyRef::parse("alias/"),
            Err(KeyError::InvalidAlias(_))
        ));
        assert!(matches!(
            KeyRef::parse("alias/a b"),
            Err(KeyError::InvalidAlias(_))
        ));
    }

    #[test]
    fn aliases_are_normalized_and_checked() {
        assert_eq!(validate_alias("pay").unwrap(), "alias/pay");
        assert_eq!(
            validate_alias("alias/team/pay-1_x").unwrap(),
            "alias/team/pay-1_x"
        );
        assert!(validate_alias("alias/hsmd-internal").is_err());
        assert!(validate_alias(&"a".repeat(257)).is_err());
    }

    #[test]
    fn state_reasons_are_specific() {
        let k = Uuid::nil();
        assert_eq!(
            KeyError::KeyState {
                key: k,
                state: KeyState::Disabled
            }
            .reason(),
            "KEY_DISABLED"
        );
        assert_eq!(
            KeyError::KeyState {
                key: k,
                state: KeyState::PendingDeletion
            }
            .reason(),
            "KEY_PENDING_DELETION"
        );
    }

    #[test]
    fn truncation_respects_utf8() {
        assert_eq!(truncate("ééé", 3), "é...");
    }
}
