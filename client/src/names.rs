//! Names of the API's enums as people type them.
//!
//! The proto names are the vocabulary (`RSA_2048`, `ECDSA_SHA_256`, `PENDING_DELETION`);
//! [`parse`] accepts them case-insensitively with `-` or `_` (`rsa-2048`), plus a few
//! aliases (`ED25519` for the signing algorithm `ED25519_SHA_512`). [`name_of`] turns the
//! `i32` fields of messages back into names.

use crate::v1::{
    AuditOutcome, EncryptionAlgorithm, ImageSignatureStatus, KeyOrigin, KeySpec, KeyState,
    KeyUsage, MessageType, SignatureTrigger, SigningAlgorithm, WrappingAlgorithm,
};

/// A generated API enum that has proto names.
pub trait ProtoEnum: Sized + Copy + TryFrom<i32> + 'static {
    /// What the enum names, for error messages ("key spec").
    const WHAT: &'static str;
    /// The proto name of a value.
    fn proto_name(self) -> &'static str;
    /// The value with this exact proto name.
    fn from_proto_name(name: &str) -> Option<Self>;
    /// Extra accepted spellings (already upper-case with `_`).
    fn alias(_normalized: &str) -> Option<Self> {
        None
    }
}

macro_rules! proto_enum {
    ($ty:ty, $what:literal) => {
        impl ProtoEnum for $ty {
            const WHAT: &'static str = $what;
            fn proto_name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_proto_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
        }
    };
}

proto_enum!(KeySpec, "key spec");
proto_enum!(KeyUsage, "key usage");
proto_enum!(KeyOrigin, "key origin");
proto_enum!(KeyState, "key state");
proto_enum!(MessageType, "message type");
proto_enum!(AuditOutcome, "audit outcome");
proto_enum!(EncryptionAlgorithm, "encryption algorithm");
proto_enum!(SignatureTrigger, "signature trigger");
proto_enum!(ImageSignatureStatus, "image signature status");

impl ProtoEnum for SigningAlgorithm {
    const WHAT: &'static str = "signing algorithm";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
    fn from_proto_name(name: &str) -> Option<Self> {
        Self::from_str_name(name)
    }
    fn alias(normalized: &str) -> Option<Self> {
        (normalized == "ED25519").then_some(SigningAlgorithm::Ed25519Sha512)
    }
}

impl ProtoEnum for WrappingAlgorithm {
    const WHAT: &'static str = "wrapping algorithm";
    fn proto_name(self) -> &'static str {
        self.as_str_name()
    }
    fn from_proto_name(name: &str) -> Option<Self> {
        Self::from_str_name(name)
    }
    /// The names of AWS KMS, without the proto prefix (`RSA_AES_KEY_WRAP_SHA_256`).
    fn alias(normalized: &str) -> Option<Self> {
        Self::from_str_name(&format!("WRAPPING_ALGORITHM_{normalized}"))
            .filter(|a| *a != WrappingAlgorithm::Unspecified)
    }
}

/// A wrapping algorithm's name as hsmctl takes it: without the `WRAPPING_ALGORITHM_`
/// prefix (`RSA_AES_KEY_WRAP_SHA_256`), or `UNKNOWN(n)`.
pub fn wrapping_algorithm_name(value: i32) -> String {
    let name = name_of::<WrappingAlgorithm>(value);
    match name.strip_prefix("WRAPPING_ALGORITHM_") {
        Some(short) => short.to_string(),
        None => name,
    }
}

/// A name that is not one of the enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {input:?}; expected one of: {expected}")]
pub struct NameError {
    /// What was being parsed ("key spec").
    pub what: &'static str,
    /// The input as given.
    pub input: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

/// Parses a proto enum name case-insensitively, with `-` or `_` between words.
/// The `*_UNSPECIFIED` value is refused: it never means anything on the command line.
pub fn parse<E: ProtoEnum>(input: &str) -> Result<E, NameError> {
    let normalized = input.trim().to_ascii_uppercase().replace('-', "_");
    E::from_proto_name(&normalized)
        .filter(|v| !v.proto_name().ends_with("_UNSPECIFIED"))
        .or_else(|| E::alias(&normalized))
        .ok_or_else(|| NameError {
            what: E::WHAT,
            input: input.to_string(),
            expected: values::<E>()
                .iter()
                .map(|v| v.proto_name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Every value of the enum but `*_UNSPECIFIED`, in proto order.
pub fn values<E: ProtoEnum>() -> Vec<E> {
    // Generated enums number their values densely from 0; stop at the first gap.
    (1..)
        .map_while(|i| E::try_from(i).ok())
        .filter(|v| !v.proto_name().ends_with("_UNSPECIFIED"))
        .collect()
}

/// The proto name of an enum field's raw value, or `UNKNOWN(n)` for a value this client
/// does not know (a newer server).
pub fn name_of<E: ProtoEnum>(value: i32) -> String {
    match E::try_from(value) {
        Ok(v) => v.proto_name().to_string(),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

/// The proto names of a repeated enum field.
pub fn names_of<E: ProtoEnum>(values: &[i32]) -> Vec<String> {
    values.iter().map(|v| name_of::<E>(*v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_proto_names_in_any_case_and_separator() {
        assert_eq!(parse::<KeySpec>("RSA_2048"), Ok(KeySpec::Rsa2048));
        assert_eq!(parse::<KeySpec>("rsa-2048"), Ok(KeySpec::Rsa2048));
        assert_eq!(parse::<KeySpec>("Ec_P256"), Ok(KeySpec::EcP256));
        assert_eq!(parse::<KeyUsage>("sign-verify"), Ok(KeyUsage::SignVerify));
        assert_eq!(
            parse::<SigningAlgorithm>("rsa_pkcs1_sha_256"),
            Ok(SigningAlgorithm::RsaPkcs1Sha256)
        );
        assert_eq!(
            parse::<SigningAlgorithm>("ECDSA-SHA-256"),
            Ok(SigningAlgorithm::EcdsaSha256)
        );
        assert_eq!(
            parse::<AuditOutcome>("throttled"),
            Ok(AuditOutcome::Throttled)
        );
        assert_eq!(
            parse::<KeyState>("pending-deletion"),
            Ok(KeyState::PendingDeletion)
        );
    }

    #[test]
    fn ed25519_is_an_alias_for_the_signing_algorithm() {
        assert_eq!(
            parse::<SigningAlgorithm>("ed25519"),
            Ok(SigningAlgorithm::Ed25519Sha512)
        );
        assert_eq!(
            parse::<SigningAlgorithm>("ED25519_SHA_512"),
            Ok(SigningAlgorithm::Ed25519Sha512)
        );
        // As a key spec, ED25519 is the spec itself.
        assert_eq!(parse::<KeySpec>("ed25519"), Ok(KeySpec::Ed25519));
    }

    #[test]
    fn refuses_unspecified_and_unknown_names() {
        let err = parse::<KeySpec>("key_spec_unspecified").unwrap_err();
        assert_eq!(err.what, "key spec");
        assert!(
            err.expected.starts_with("RSA_2048, RSA_3072"),
            "{}",
            err.expected
        );
        assert!(!err.expected.contains("UNSPECIFIED"));
        assert!(parse::<KeyUsage>("sign").is_err());
        assert!(parse::<SigningAlgorithm>("").is_err());
    }

    #[test]
    fn wrapping_algorithms_with_or_without_prefix() {
        for (input, want) in [
            ("RSAES_OAEP_SHA_1", WrappingAlgorithm::RsaesOaepSha1),
            ("rsaes-oaep-sha-256", WrappingAlgorithm::RsaesOaepSha256),
            (
                "RSA_AES_KEY_WRAP_SHA_1",
                WrappingAlgorithm::RsaAesKeyWrapSha1,
            ),
            (
                "rsa_aes_key_wrap_sha_256",
                WrappingAlgorithm::RsaAesKeyWrapSha256,
            ),
            (
                "WRAPPING_ALGORITHM_RSA_AES_KEY_WRAP_SHA_256",
                WrappingAlgorithm::RsaAesKeyWrapSha256,
            ),
        ] {
            assert_eq!(parse::<WrappingAlgorithm>(input), Ok(want), "{input}");
        }
        assert!(parse::<WrappingAlgorithm>("unspecified").is_err());
        assert!(parse::<WrappingAlgorithm>("RSA_AES_KEY_WRAP").is_err());
        assert_eq!(wrapping_algorithm_name(4), "RSA_AES_KEY_WRAP_SHA_256");
        assert_eq!(wrapping_algorithm_name(0), "UNSPECIFIED");
        assert_eq!(wrapping_algorithm_name(42), "UNKNOWN(42)");
    }

    #[test]
    fn image_signing_enums() {
        assert_eq!(
            parse::<SignatureTrigger>("event"),
            Ok(SignatureTrigger::Event)
        );
        assert_eq!(
            parse::<SignatureTrigger>("Scheduled"),
            Ok(SignatureTrigger::Scheduled)
        );
        assert!(parse::<SignatureTrigger>("signature-trigger-unspecified").is_err());
        assert_eq!(
            values::<SignatureTrigger>(),
            [
                SignatureTrigger::Event,
                SignatureTrigger::Manual,
                SignatureTrigger::Scheduled
            ]
        );
        assert_eq!(name_of::<ImageSignatureStatus>(1), "IMAGE_SIGNED");
        assert_eq!(
            name_of::<ImageSignatureStatus>(3),
            "IMAGE_SIGNATURE_INVALID"
        );
    }

    #[test]
    fn names_of_raw_values() {
        assert_eq!(name_of::<KeyState>(KeyState::Enabled as i32), "ENABLED");
        assert_eq!(name_of::<KeyState>(99), "UNKNOWN(99)");
        assert_eq!(
            names_of::<SigningAlgorithm>(&[7, 9]),
            ["ECDSA_SHA_256", "ED25519_SHA_512"]
        );
        assert_eq!(
            values::<KeyUsage>(),
            [KeyUsage::SignVerify, KeyUsage::EncryptDecrypt]
        );
    }
}
