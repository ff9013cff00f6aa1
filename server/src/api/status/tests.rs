//! The status table: every error of the layers below, its gRPC code, reason and
//! audit outcome, and the messages a caller sees.

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
