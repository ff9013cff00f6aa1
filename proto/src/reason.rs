//! The stable reasons of hsmd's errors: the `reason` of the `google.rpc.ErrorInfo`
//! (domain `hsmd`) that every error status carries, and of a `StreamError`.
//!
//! Defined once, here, because both ends need them: the server names the reason of each
//! error variant by type, and the client matches on the same enum instead of on strings.
//! It is a Rust enum, not a proto message: on the wire a reason stays a string, and
//! [`Reason::as_str`] is that string, byte for byte. Each reason has one gRPC code
//! ([`Reason::code`]), the README's error table.

use std::fmt;
use std::str::FromStr;

/// Declares [`Reason`] from one table of variant, wire string and doc, so the enum, its
/// strings and its parser cannot drift apart.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $variant:ident => $text:literal,)+) => {
        /// A stable reason hsmd sends with an error.
        ///
        /// `#[non_exhaustive]`: a newer server may send reasons this version does not
        /// know; [`Reason::parse`] answers `None` for them, and a client keeps the raw
        /// string (see `hsm_client::ClientError`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Reason {
            /// Every reason, in the order of the table.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The string sent on the wire, e.g. `"KEY_NOT_FOUND"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)+
                }
            }

            /// The reason a wire string names; `None` for a string this version does not
            /// know (a newer server's reason, or a status built by a proxy).
            pub fn parse(s: &str) -> Option<Reason> {
                match s {
                    $($text => Some(Reason::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// A malformed request field not covered by a more specific reason.
    InvalidArgument => "INVALID_ARGUMENT",
    /// A key id that is neither a UUID nor `alias/NAME`.
    InvalidKeyId => "INVALID_KEY_ID",
    /// A RAW message over the size limit (send a DIGEST instead).
    MessageTooLarge => "MESSAGE_TOO_LARGE",
    /// A digest of the wrong length for the algorithm.
    DigestLengthMismatch => "DIGEST_LENGTH_MISMATCH",
    /// An algorithm the key's spec (or the import rules) does not allow.
    AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
    /// A deletion window outside 7..30 days.
    InvalidDeletionWindow => "INVALID_DELETION_WINDOW",
    /// A malformed alias.
    InvalidAlias => "INVALID_ALIAS",
    /// A key spec this hsmd or its token does not offer.
    UnsupportedKeySpec => "UNSUPPORTED_KEY_SPEC",
    /// A CreateKey idempotency token reused with other parameters.
    IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
    /// A plaintext over the Encrypt limit or the OAEP limit of an RSA key.
    PlaintextTooLarge => "PLAINTEXT_TOO_LARGE",
    /// Not an hsmd ciphertext, or one of another key.
    InvalidCiphertext => "INVALID_CIPHERTEXT",
    /// A ciphertext that does not decrypt (one reason for every cause: no oracle).
    DecryptionFailed => "DECRYPTION_FAILED",
    /// An import token hsmd did not issue.
    InvalidImportToken => "INVALID_IMPORT_TOKEN",
    /// An import token issued for another key.
    ImportTokenWrongKey => "IMPORT_TOKEN_WRONG_KEY",
    /// Wrapped key material that does not unwrap.
    InvalidWrappedKeyMaterial => "INVALID_WRAPPED_KEY_MATERIAL",
    /// Key material of another spec than the key's.
    KeyMaterialSpecMismatch => "KEY_MATERIAL_SPEC_MISMATCH",
    /// Key material other than the key's first import.
    KeyMaterialMismatch => "KEY_MATERIAL_MISMATCH",
    /// A `valid_to` that is not in the future.
    InvalidValidTo => "INVALID_VALID_TO",
    /// A public key that is not the imported private key's.
    PublicKeyMismatch => "PUBLIC_KEY_MISMATCH",
    /// No such key.
    KeyNotFound => "KEY_NOT_FOUND",
    /// No such alias.
    AliasNotFound => "ALIAS_NOT_FOUND",
    /// The alias names another key already.
    AliasExists => "ALIAS_EXISTS",
    /// The key is DISABLED.
    KeyDisabled => "KEY_DISABLED",
    /// The key is PENDING_DELETION.
    KeyPendingDeletion => "KEY_PENDING_DELETION",
    /// The key is PENDING_IMPORT (no material yet).
    KeyPendingImport => "KEY_PENDING_IMPORT",
    /// The key is DESTROYED.
    KeyDestroyed => "KEY_DESTROYED",
    /// The key's usage does not allow the operation.
    WrongKeyUsage => "WRONG_KEY_USAGE",
    /// The key's state does not allow the operation (or changed meanwhile).
    InvalidKeyState => "INVALID_KEY_STATE",
    /// The import token is older than its lifetime.
    ImportTokenExpired => "IMPORT_TOKEN_EXPIRED",
    /// A newer import token was issued for the key.
    ImportTokenSuperseded => "IMPORT_TOKEN_SUPERSEDED",
    /// The call had no verified client certificate identity.
    NoClientIdentity => "NO_CLIENT_IDENTITY",
    /// The policy does not let this principal do this action on this key.
    AccessDenied => "ACCESS_DENIED",
    /// Over the principal's rate limit; the status carries the retry delay.
    RateLimited => "RATE_LIMITED",
    /// The principal has `tls.max_connections_per_principal` connections open already;
    /// calls on a connection past that are refused (use one of the open ones).
    ConnectionLimit => "CONNECTION_LIMIT",
    /// The token is briefly out of reach.
    TokenUnavailable => "TOKEN_UNAVAILABLE",
    /// The audit log cannot record the call, so it was not carried out.
    AuditUnavailable => "AUDIT_UNAVAILABLE",
    /// The metadata store (a cluster's PostgreSQL) is out of reach: the call was not
    /// answered, never from remembered metadata alone; retry.
    StoreUnavailable => "STORE_UNAVAILABLE",
    /// A bug; the detail is only in the server log.
    Internal => "INTERNAL",
    /// A malformed certificate subject.
    InvalidSubject => "INVALID_SUBJECT",
    /// A malformed subject alternative name.
    InvalidSan => "INVALID_SAN",
    /// A certificate chain that cannot be read or does not chain.
    InvalidCertificate => "INVALID_CERTIFICATE",
    /// The leaf certificate certifies another key.
    CertificateKeyMismatch => "CERTIFICATE_KEY_MISMATCH",
    /// No certificate imported for the key.
    CertificateNotFound => "CERTIFICATE_NOT_FOUND",
    /// The key cannot rotate: asymmetric, or its material was imported.
    RotationNotSupported => "ROTATION_NOT_SUPPORTED",
    /// A rotation period outside 7..365 days.
    InvalidRotationPeriod => "INVALID_ROTATION_PERIOD",
    /// The token lacks a mechanism (or key size) the call needs; the message names it.
    MechanismNotSupported => "MECHANISM_NOT_SUPPORTED",
    /// A signature policy name breaks the naming rules.
    InvalidPolicyName => "INVALID_POLICY_NAME",
    /// A registry namespace that is not a valid first path segment of a repository.
    InvalidNamespace => "INVALID_NAMESPACE",
    /// A repository or tag selector that is not a valid doublestar pattern; the message
    /// names the pattern and the position.
    InvalidScopeRule => "INVALID_SCOPE_RULE",
    /// A cron expression that does not parse, or never fires.
    InvalidSchedule => "INVALID_SCHEDULE",
    /// An image reference that is not HOST/NAMESPACE/REPO:TAG or ...@sha256:HEX.
    InvalidImageReference => "INVALID_IMAGE_REFERENCE",
    /// The namespace already has a signature policy (one per namespace).
    PolicyExists => "POLICY_EXISTS",
    /// The namespace has no signature policy.
    PolicyNotFound => "POLICY_NOT_FOUND",
    /// The registry has no such image (tag or digest).
    ImageNotFound => "IMAGE_NOT_FOUND",
    /// A key of a spec images are not signed with (only RSA and EC P-256/P-384).
    KeySpecNotAllowed => "KEY_SPEC_NOT_ALLOWED",
    /// hsmd has no registry configured (`[registry] url`).
    RegistryNotConfigured => "REGISTRY_NOT_CONFIGURED",
    /// The policy was changed by another call while this one read it: retry.
    PolicyChanged => "POLICY_CHANGED",
    /// The registry did not answer, or answered with a server error: retry later.
    RegistryUnavailable => "REGISTRY_UNAVAILABLE",
    /// The registry refused a request (credentials, deletes disabled, a manifest it
    /// would not take); the message says what it answered.
    RegistryRefused => "REGISTRY_REFUSED",
    /// SignImage with a namespace's policy key while that policy is disabled.
    PolicyDisabled => "POLICY_DISABLED",
    /// SignImage with a namespace's policy key for an image the policy does not cover.
    ImageOutOfScope => "IMAGE_OUT_OF_SCOPE",
}

impl Reason {
    /// True for the reasons that mean "the call was not carried out; the same call may
    /// succeed later": those whose code is UNAVAILABLE or RESOURCE_EXHAUSTED
    /// (RATE_LIMITED, TOKEN_UNAVAILABLE, AUDIT_UNAVAILABLE, STORE_UNAVAILABLE...), the codes hsm-client also
    /// retries for a reason it does not know. Not CONNECTION_LIMIT: the connection it
    /// came on is refused until it closes, so a retry on it fails the same way.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self.code(),
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
        ) && !matches!(self, Reason::ConnectionLimit)
    }

    /// The gRPC code every error with this reason carries (the README's error table,
    /// read by reason). The server derives its status codes from here, so an error's
    /// code follows from its type: type -> reason -> code.
    pub const fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Reason::InvalidArgument
            | Reason::InvalidKeyId
            | Reason::MessageTooLarge
            | Reason::DigestLengthMismatch
            | Reason::AlgorithmNotAllowed
            | Reason::InvalidDeletionWindow
            | Reason::InvalidAlias
            | Reason::UnsupportedKeySpec
            | Reason::IdempotencyMismatch
            | Reason::PlaintextTooLarge
            | Reason::InvalidCiphertext
            | Reason::DecryptionFailed
            | Reason::InvalidImportToken
            | Reason::ImportTokenWrongKey
            | Reason::InvalidWrappedKeyMaterial
            | Reason::KeyMaterialSpecMismatch
            | Reason::KeyMaterialMismatch
            | Reason::InvalidValidTo
            | Reason::PublicKeyMismatch
            | Reason::InvalidSubject
            | Reason::InvalidSan
            | Reason::InvalidCertificate
            | Reason::InvalidRotationPeriod
            | Reason::InvalidPolicyName
            | Reason::InvalidNamespace
            | Reason::InvalidScopeRule
            | Reason::InvalidSchedule
            | Reason::InvalidImageReference => Code::InvalidArgument,
            Reason::KeyNotFound
            | Reason::AliasNotFound
            | Reason::CertificateNotFound
            | Reason::PolicyNotFound
            | Reason::ImageNotFound => Code::NotFound,
            Reason::AliasExists | Reason::PolicyExists => Code::AlreadyExists,
            Reason::PolicyChanged => Code::Aborted,
            Reason::KeyDisabled
            | Reason::KeyPendingDeletion
            | Reason::KeyPendingImport
            | Reason::KeyDestroyed
            | Reason::WrongKeyUsage
            | Reason::InvalidKeyState
            | Reason::ImportTokenExpired
            | Reason::ImportTokenSuperseded
            | Reason::CertificateKeyMismatch
            | Reason::RotationNotSupported
            | Reason::MechanismNotSupported
            | Reason::KeySpecNotAllowed
            | Reason::RegistryNotConfigured
            | Reason::RegistryRefused
            | Reason::PolicyDisabled
            | Reason::ImageOutOfScope => Code::FailedPrecondition,
            Reason::NoClientIdentity => Code::Unauthenticated,
            Reason::AccessDenied => Code::PermissionDenied,
            Reason::RateLimited | Reason::ConnectionLimit => Code::ResourceExhausted,
            Reason::TokenUnavailable
            | Reason::AuditUnavailable
            | Reason::StoreUnavailable
            | Reason::RegistryUnavailable => Code::Unavailable,
            Reason::Internal => Code::Internal,
        }
    }
}

impl Reason {
    /// The name of this reason's gRPC code, as audit records write it.
    pub const fn code_name(self) -> &'static str {
        code_name(self.code())
    }
}

/// Name of a gRPC code as written in audit records ("OK", "INVALID_ARGUMENT"...).
pub const fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
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

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason string this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownReason(pub String);

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown hsmd error reason '{}'", self.0)
    }
}

impl std::error::Error for UnknownReason {}

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::parse(s).ok_or_else(|| UnknownReason(s.to_string()))
    }
}

/// A reason compares equal to its wire string.
impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_wire_string() {
        for &r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{r:?}"
            );
        }
        let mut strings: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(
            strings.len(),
            Reason::ALL.len(),
            "wire strings are distinct"
        );
    }

    #[test]
    fn exactly_the_unavailable_and_throttled_reasons_are_retryable() {
        use tonic::Code;
        let retryable: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| r.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                Reason::RateLimited,
                Reason::TokenUnavailable,
                Reason::AuditUnavailable,
                Reason::StoreUnavailable,
                Reason::RegistryUnavailable
            ]
        );
        for &r in Reason::ALL {
            assert_ne!(r.code(), Code::Ok, "{r:?}");
        }
        assert_eq!(Reason::KeyNotFound.code(), Code::NotFound);
        assert_eq!(Reason::ImportTokenExpired.code(), Code::FailedPrecondition);
        assert_eq!(Reason::ImportTokenWrongKey.code(), Code::InvalidArgument);
    }

    #[test]
    fn unknown_strings_are_not_reasons() {
        assert_eq!(Reason::parse("NO_SUCH_REASON"), None);
        assert_eq!(Reason::parse("key_not_found"), None);
        assert_eq!(Reason::parse(""), None);
        assert_eq!(
            "X".parse::<Reason>(),
            Err(UnknownReason("X".into())),
            "FromStr keeps the text"
        );
    }

    #[test]
    fn wire_strings_are_the_documented_ones() {
        assert_eq!(Reason::KeyNotFound, "KEY_NOT_FOUND");
        assert_eq!(Reason::DigestLengthMismatch, "DIGEST_LENGTH_MISMATCH");
        assert_eq!(Reason::NoClientIdentity, "NO_CLIENT_IDENTITY");
        assert_eq!(Reason::InvalidSan, "INVALID_SAN");
        assert_eq!(Reason::RotationNotSupported, "ROTATION_NOT_SUPPORTED");
        assert_eq!(
            Reason::RotationNotSupported.code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            Reason::InvalidRotationPeriod.code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Reason::MechanismNotSupported.code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(Reason::ConnectionLimit, "CONNECTION_LIMIT");
        assert_eq!(
            Reason::ConnectionLimit.code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(Reason::ALL.len(), 61);
    }

    #[test]
    fn retryable_reasons() {
        let retry: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| r.is_retryable())
            .collect();
        assert_eq!(
            retry,
            [
                Reason::RateLimited,
                Reason::TokenUnavailable,
                Reason::AuditUnavailable,
                Reason::StoreUnavailable,
                Reason::RegistryUnavailable
            ]
        );
    }
}
