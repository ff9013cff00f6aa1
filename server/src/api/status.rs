//! The one place that builds a `tonic::Status`: every error of the layers below gets
//! its gRPC code and a stable reason (google.rpc.ErrorInfo, domain "hsmd"). Internal
//! detail is logged here and never sent: the client sees what it can act on.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::audit::Outcome;
use crate::csr::CertError;
use crate::domain::reason::Reason;
use crate::keys::KeyError;

/// ErrorInfo domain of every hsmd error.
pub(crate) const DOMAIN: &str = "hsmd";
/// Metadata key of a throttled call's retry delay, in milliseconds (also in the
/// status details as google.rpc.RetryInfo).
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Errors a handler can end with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no verified client certificate identity")]
    Unauthenticated,
    /// The policy does not allow it. Names the action and the key, never the rules.
    #[error("principal '{principal}' may not {action} {}", key_phrase(key))]
    AccessDenied {
        principal: String,
        action: &'static str,
        key: Option<String>,
    },
    #[error("rate limit for {class} calls reached; retry in {} ms", retry_after.as_millis().max(1))]
    RateLimited {
        class: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("audit log unavailable: the call was not carried out; retry later")]
    AuditUnavailable,
    #[error(transparent)]
    Cert(CertError),
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::Key(k) => ApiError::Key(k),
            other => ApiError::Cert(other),
        }
    }
}

fn key_phrase(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key {k}"),
        None => "(no rule grants it this action)".into(),
    }
}

impl ApiError {
    /// gRPC code of this error.
    pub(crate) fn code(&self) -> Code {
        match self {
            ApiError::Unauthenticated => Code::Unauthenticated,
            ApiError::AccessDenied { .. } => Code::PermissionDenied,
            ApiError::RateLimited { .. } => Code::ResourceExhausted,
            ApiError::AuditUnavailable => Code::Unavailable,
            ApiError::Cert(c) => cert_code(c),
            ApiError::Key(k) => match k {
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
                | KeyError::InvalidPublicKey(_)
                | KeyError::InvalidKeyId(_)
                | KeyError::MessageTooLarge { .. }
                | KeyError::DigestLength { .. }
                | KeyError::AlgorithmNotAllowed { .. }
                | KeyError::InvalidDeletionWindow(_)
                | KeyError::InvalidAlias(_)
                | KeyError::IdempotencyMismatch(_)
                | KeyError::UnsupportedKeySpec(_)
                | KeyError::PlaintextTooLarge { .. }
                | KeyError::InvalidCiphertext(_)
                | KeyError::DecryptionFailed => Code::InvalidArgument,
                KeyError::Import { reason, .. } if reason.is_precondition() => {
                    Code::FailedPrecondition
                }
                KeyError::Import { .. } => Code::InvalidArgument,
                KeyError::KeyNotFound(_) | KeyError::AliasNotFound(_) => Code::NotFound,
                KeyError::AliasExists(_) => Code::AlreadyExists,
                KeyError::KeyState { .. }
                | KeyError::InvalidKeyState(_)
                | KeyError::WrongUsage { .. } => Code::FailedPrecondition,
                KeyError::Unavailable(_) => Code::Unavailable,
                KeyError::Internal(_) => Code::Internal,
            },
        }
    }

    /// Stable reason (google.rpc.ErrorInfo.reason, and the audit record's `reason`).
    pub(crate) fn reason(&self) -> Reason {
        match self {
            ApiError::Unauthenticated => Reason::NoClientIdentity,
            ApiError::AccessDenied { .. } => Reason::AccessDenied,
            ApiError::RateLimited { .. } => Reason::RateLimited,
            ApiError::AuditUnavailable => Reason::AuditUnavailable,
            ApiError::Cert(c) => c.reason(),
            ApiError::Key(k) => k.reason(),
        }
    }

    /// Audit outcome of a call that ended with this error.
    pub(crate) fn outcome(&self) -> Outcome {
        match self.code() {
            Code::Unauthenticated | Code::PermissionDenied => Outcome::Denied,
            Code::ResourceExhausted => Outcome::Throttled,
            Code::Unavailable | Code::Internal | Code::Unknown => Outcome::Failed,
            _ => Outcome::Invalid,
        }
    }

    /// The status sent to the client.
    pub(crate) fn to_status(&self) -> Status {
        let message = match self {
            ApiError::Key(KeyError::Unavailable(detail)) => {
                tracing::warn!(%detail, "token unavailable");
                "token unavailable; retry later".to_string()
            }
            ApiError::Key(KeyError::Internal(detail)) => {
                tracing::error!(%detail, "internal error");
                "internal error (see the server log)".to_string()
            }
            other => other.to_string(),
        };
        let mut details =
            ErrorDetails::with_error_info(self.reason(), DOMAIN, HashMap::<String, String>::new());
        if let ApiError::RateLimited { retry_after, .. } = self {
            details.set_retry_info(Some(*retry_after));
        }
        let mut status = Status::with_error_details(self.code(), message, details);
        if let ApiError::RateLimited { retry_after, .. } = self
            && let Ok(v) = retry_after.as_millis().max(1).to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        status
    }
}

/// gRPC code of a certificate error (its key errors are mapped as `ApiError::Key`).
fn cert_code(e: &CertError) -> Code {
    match e {
        CertError::Subject(_)
        | CertError::San(_)
        | CertError::InvalidArgument(_)
        | CertError::ValidityDays { .. }
        | CertError::ValidityEnd(_)
        | CertError::KeyUsageNotForSpec { .. }
        | CertError::NoPublicKey(_)
        | CertError::CannotSign(_)
        | CertError::ToBeSignedTooLarge { .. }
        | CertError::InvalidCertificate(_) => Code::InvalidArgument,
        CertError::KeyMismatch { .. } => Code::FailedPrecondition,
        CertError::NotFound(_) => Code::NotFound,
        // Never built: `From<CertError>` turns key errors into `ApiError::Key`.
        CertError::Key(_) => Code::Internal,
    }
}

/// Name of a gRPC code as written in audit records ("OK", "INVALID_ARGUMENT"...).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::san::KeyUsageBit;
    use crate::domain::spec::{KeySpec, KeyState, KeyUsage};
    use crate::keys::import::ImportReason;

    #[test]
    fn mapping_table() {
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                KeyError::KeyNotFound("k".into()).into(),
                Code::NotFound,
                "KEY_NOT_FOUND",
            ),
            (
                KeyError::AliasExists("a".into()).into(),
                Code::AlreadyExists,
                "ALIAS_EXISTS",
            ),
            (
                KeyError::MessageTooLarge {
                    len: 5000,
                    max: 4096,
                }
                .into(),
                Code::InvalidArgument,
                "MESSAGE_TOO_LARGE",
            ),
            (
                KeyError::KeyState {
                    key: uuid::Uuid::nil(),
                    state: KeyState::Disabled,
                }
                .into(),
                Code::FailedPrecondition,
                "KEY_DISABLED",
            ),
            (
                KeyError::Unavailable("x".into()).into(),
                Code::Unavailable,
                "TOKEN_UNAVAILABLE",
            ),
            (
                KeyError::DecryptionFailed.into(),
                Code::InvalidArgument,
                "DECRYPTION_FAILED",
            ),
            (
                KeyError::InvalidCiphertext("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_CIPHERTEXT",
            ),
            (
                KeyError::PlaintextTooLarge {
                    len: 5000,
                    max: 4096,
                    hint: "",
                }
                .into(),
                Code::InvalidArgument,
                "PLAINTEXT_TOO_LARGE",
            ),
            (
                ApiError::AuditUnavailable,
                Code::Unavailable,
                "AUDIT_UNAVAILABLE",
            ),
            (
                ApiError::AccessDenied {
                    principal: "p".into(),
                    action: "Sign",
                    key: Some("k".into()),
                },
                Code::PermissionDenied,
                "ACCESS_DENIED",
            ),
            (
                ApiError::RateLimited {
                    class: "sign",
                    retry_after: std::time::Duration::from_millis(5),
                },
                Code::ResourceExhausted,
                "RATE_LIMITED",
            ),
            (
                CertError::Subject("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_SUBJECT",
            ),
            (
                CertError::San("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_SAN",
            ),
            (
                CertError::InvalidCertificate("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_CERTIFICATE",
            ),
            (
                CertError::KeyMismatch {
                    key: uuid::Uuid::nil(),
                    detail: "x".into(),
                }
                .into(),
                Code::FailedPrecondition,
                "CERTIFICATE_KEY_MISMATCH",
            ),
            (
                CertError::NotFound(uuid::Uuid::nil()).into(),
                Code::NotFound,
                "CERTIFICATE_NOT_FOUND",
            ),
            (
                CertError::Key(KeyError::KeyNotFound("k".into())).into(),
                Code::NotFound,
                "KEY_NOT_FOUND",
            ),
            (
                ApiError::Unauthenticated,
                Code::Unauthenticated,
                "NO_CLIENT_IDENTITY",
            ),
            (
                KeyError::Internal("x".into()).into(),
                Code::Internal,
                "INTERNAL",
            ),
            (
                KeyError::InvalidArgument("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::Import {
                    reason: ImportReason::ImportTokenExpired,
                    message: "x".into(),
                }
                .into(),
                Code::FailedPrecondition,
                "IMPORT_TOKEN_EXPIRED",
            ),
            (
                KeyError::Import {
                    reason: ImportReason::InvalidWrappedKeyMaterial,
                    message: "x".into(),
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_WRAPPED_KEY_MATERIAL",
            ),
            // The named bad-input variants: INVALID_ARGUMENT, as before they had names.
            (
                KeyError::UsageNotAllowed {
                    usage: KeyUsage::EncryptDecrypt,
                    spec: KeySpec::EcP256,
                    allowed: "SIGN_VERIFY".into(),
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::DigestNotOffered {
                    algorithm: "ED25519",
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::InvalidPageToken.into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::EmptyPlaintext.into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::EncryptionAlgorithmRequired {
                    spec: KeySpec::Rsa2048,
                    offered: "RSAES_OAEP_SHA_1".into(),
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::AadNotAllowed {
                    algorithm: "RSAES_OAEP_SHA_1",
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::AadTooLarge {
                    len: 9000,
                    max: 8192,
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::DataKeySpecNotOffered(KeySpec::Rsa2048).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::WrappingKeySpecNotOffered(KeySpec::EcP256).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::PublicKeyNotExpected {
                    key: uuid::Uuid::nil(),
                    spec: KeySpec::Aes256,
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                KeyError::InvalidPublicKey("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::ValidityDays { days: 0, max: 3650 }.into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::ValidityEnd("x".into()).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::KeyUsageNotForSpec {
                    bit: KeyUsageBit::KeyAgreement,
                    spec: KeySpec::Rsa2048,
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::NoPublicKey(KeySpec::Aes256).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::CannotSign(KeySpec::Aes256).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                CertError::ToBeSignedTooLarge {
                    len: 5000,
                    algorithm: "ED25519",
                    max: 4096,
                }
                .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
        ];
        for (err, code, reason) in cases {
            let status = err.to_status();
            assert_eq!(status.code(), code);
            assert_eq!(
                status.get_error_details().error_info().unwrap().reason,
                reason
            );
            // The typed reason is the wire string, and the client's retry rule (by
            // reason) agrees with the status code.
            assert_eq!(err.reason().as_str(), reason);
            assert_eq!(
                err.reason().is_retryable(),
                matches!(code, Code::Unavailable | Code::ResourceExhausted),
                "{reason}"
            );
        }
    }

    /// The variants that replaced `InvalidArgument(format!(..))` send the same text.
    #[test]
    fn named_variants_keep_their_messages() {
        let id = uuid::Uuid::nil();
        let cases: Vec<(ApiError, &str)> = vec![
            (
                KeyError::UsageNotAllowed {
                    usage: KeyUsage::EncryptDecrypt,
                    spec: KeySpec::EcP256,
                    allowed: "SIGN_VERIFY".into(),
                }
                .into(),
                "usage ENCRYPT_DECRYPT is not valid for EC_P256 keys; allowed: SIGN_VERIFY",
            ),
            (
                KeyError::DigestNotOffered {
                    algorithm: "ED25519",
                }
                .into(),
                "ED25519 signs RAW messages only (pure Ed25519 has no DIGEST form)",
            ),
            (
                KeyError::InvalidPageToken.into(),
                "page_token is not one this server issued",
            ),
            (
                KeyError::EmptyPlaintext.into(),
                "plaintext is empty; give 1..4096 bytes",
            ),
            (
                KeyError::EncryptionAlgorithmRequired {
                    spec: KeySpec::Rsa2048,
                    offered: "A, B".into(),
                }
                .into(),
                "encryption_algorithm is required for RSA_2048 keys; one of: A, B",
            ),
            (
                KeyError::AadNotAllowed {
                    algorithm: "RSAES_OAEP_SHA_1",
                }
                .into(),
                "aad is for SYMMETRIC_DEFAULT only (RSAES_OAEP_SHA_1 uses an empty OAEP label)",
            ),
            (
                KeyError::AadTooLarge {
                    len: 9000,
                    max: 8192,
                }
                .into(),
                "aad is 9000 bytes; at most 8192 are allowed",
            ),
            (
                KeyError::DataKeySpecNotOffered(KeySpec::Rsa2048).into(),
                "data key spec RSA_2048 is not offered; use AES_256 or AES_128",
            ),
            (
                KeyError::WrappingKeySpecNotOffered(KeySpec::EcP256).into(),
                "wrapping_key_spec EC_P256 is not offered; use RSA_2048, RSA_3072 or RSA_4096",
            ),
            (
                KeyError::PublicKeyNotExpected {
                    key: id,
                    spec: KeySpec::Aes256,
                }
                .into(),
                "public_key_der is for key pairs; key 00000000-0000-0000-0000-000000000000 is AES_256",
            ),
            (
                KeyError::InvalidPublicKey("not an SPKI".into()).into(),
                "not an SPKI",
            ),
            (
                CertError::ValidityDays { days: 0, max: 3650 }.into(),
                "validity_days 0 is outside 1..3650",
            ),
            (
                CertError::ValidityEnd("x".into()).into(),
                "validity end is out of range: x",
            ),
            (
                CertError::KeyUsageNotForSpec {
                    bit: KeyUsageBit::KeyAgreement,
                    spec: KeySpec::Rsa2048,
                }
                .into(),
                "key usage KeyAgreement is not valid for a RSA_2048 key (keyEncipherment and \
                 dataEncipherment need RSA, keyAgreement needs EC)",
            ),
            (
                CertError::NoPublicKey(KeySpec::Aes256).into(),
                "AES_256 keys have no public key, so no certificate",
            ),
            (
                CertError::CannotSign(KeySpec::Aes256).into(),
                "AES_256 keys cannot sign certificates",
            ),
            (
                CertError::ToBeSignedTooLarge {
                    len: 5000,
                    algorithm: "ED25519",
                    max: 4096,
                }
                .into(),
                "the data to sign is 5000 bytes; ED25519 signs it whole and takes at most 4096: \
                 use fewer or shorter names",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_status().message(), message);
        }
    }

    #[test]
    fn internal_detail_is_not_sent() {
        let s = ApiError::Key(KeyError::Internal("CKR_GENERAL_ERROR pin=1234".into())).to_status();
        assert!(!s.message().contains("1234"));
        assert_eq!(ApiError::Unauthenticated.outcome(), Outcome::Denied);
        assert_eq!(
            ApiError::Key(KeyError::InvalidKeyId("x".into())).outcome(),
            Outcome::Invalid
        );
    }

    #[test]
    fn throttled_status_carries_the_retry_delay() {
        let e = ApiError::RateLimited {
            class: "sign",
            retry_after: std::time::Duration::from_millis(250),
        };
        let s = e.to_status();
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(e.outcome(), Outcome::Throttled);
        let denied = ApiError::AccessDenied {
            principal: "spiffe://a".into(),
            action: "Sign",
            key: Some("alias/x".into()),
        };
        assert_eq!(
            denied.to_status().message(),
            "principal 'spiffe://a' may not Sign key alias/x"
        );
    }
}
