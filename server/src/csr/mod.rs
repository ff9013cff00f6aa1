//! Certificates for keys held in the token: PKCS#10 requests and self-signed
//! certificates built with `x509-cert` around a signature made inside the token, and the
//! certificate chains issued for a key, kept beside it.
//!
//! - `subject`: RFC 4514 subject strings to DER names;
//! - `san`: subject alternative names, key usage and extended key usage to extensions;
//! - `sigalg`: signature AlgorithmIdentifiers (RSA PKCS#1, RSA-PSS with its parameters,
//!   ECDSA, Ed25519);
//! - `build`: the request and certificate structures, signed through `KeyManager::sign`;
//! - `chain`: reading PEM/DER chains and checking them against the key;
//! - `ops`: the operations the CertificateService offers, with the store and the token.
//!
//! Everything but `ops` is pure and unit-tested.

pub(crate) mod build;
pub(crate) mod chain;
pub(crate) mod ops;
pub(crate) mod san;
pub(crate) mod sigalg;
pub(crate) mod subject;

use uuid::Uuid;

use crate::domain::reason::Reason;
use crate::domain::spec::KeySpec;
use crate::hsm::HsmError;
use crate::keys::KeyError;
use crate::store::StoreError;

/// Every way a certificate operation can fail. Key errors (not found, disabled, wrong
/// usage, algorithm not allowed...) keep their own variant and reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// The subject string is malformed; the message names the bad part.
    #[error("invalid subject: {0}")]
    Subject(String),
    /// A subject alternative name is malformed; the message names the entry.
    #[error("invalid subject alternative name: {0}")]
    San(String),
    /// Any other bad input (key usage and extended key usage values...).
    #[error("{0}")]
    InvalidArgument(String),
    /// validity_days outside 1..max.
    #[error("validity_days {days} is outside 1..{max}")]
    ValidityDays { days: u32, max: u32 },
    /// The end of the validity cannot be written as an X.509 time.
    #[error("validity end is out of range: {0}")]
    ValidityEnd(String),
    /// A key usage bit the key's type cannot have.
    #[error(
        "key usage {bit:?} is not valid for a {spec} key (keyEncipherment and dataEncipherment need RSA, keyAgreement needs EC)"
    )]
    KeyUsageNotForSpec {
        bit: san::KeyUsageBit,
        spec: KeySpec,
    },
    /// A key without a public key (AES) cannot be certified.
    #[error("{0} keys have no public key, so no certificate")]
    NoPublicKey(KeySpec),
    /// A key that cannot sign (AES) cannot sign a request or certificate.
    #[error("{0} keys cannot sign certificates")]
    CannotSign(KeySpec),
    /// The structure to sign is over the limit of an algorithm that signs it whole
    /// (Ed25519); fewer or shorter names make it fit.
    #[error(
        "the data to sign is {len} bytes; {algorithm} signs it whole and takes at most {max}: use fewer or shorter names"
    )]
    ToBeSignedTooLarge {
        len: usize,
        algorithm: &'static str,
        max: usize,
    },
    /// The certificate chain cannot be read or does not chain.
    #[error("invalid certificate chain: {0}")]
    InvalidCertificate(String),
    /// The leaf certificate certifies another public key.
    #[error("the certificate's public key is not the public key of key {key}; {detail}")]
    KeyMismatch { key: Uuid, detail: String },
    /// No certificate has been imported for the key.
    #[error("key {0} has no certificate; import one with ImportCertificate")]
    NotFound(Uuid),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl CertError {
    /// Stable reason (google.rpc.ErrorInfo.reason). The named bad-input variants keep
    /// INVALID_ARGUMENT, the reason they were sent with before they had names.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            CertError::Subject(_) => Reason::InvalidSubject,
            CertError::San(_) => Reason::InvalidSan,
            CertError::InvalidArgument(_)
            | CertError::ValidityDays { .. }
            | CertError::ValidityEnd(_)
            | CertError::KeyUsageNotForSpec { .. }
            | CertError::NoPublicKey(_)
            | CertError::CannotSign(_)
            | CertError::ToBeSignedTooLarge { .. } => Reason::InvalidArgument,
            CertError::InvalidCertificate(_) => Reason::InvalidCertificate,
            CertError::KeyMismatch { .. } => Reason::CertificateKeyMismatch,
            CertError::NotFound(_) => Reason::CertificateNotFound,
            CertError::Key(k) => k.reason(),
        }
    }

    /// An encoding failure of a structure hsmd built itself: a bug, not bad input.
    pub(crate) fn encoding(what: &str, e: der::Error) -> CertError {
        CertError::Key(KeyError::Internal(format!("encoding {what}: {e}")))
    }
}

impl From<StoreError> for CertError {
    fn from(e: StoreError) -> Self {
        CertError::Key(e.into())
    }
}

impl From<HsmError> for CertError {
    fn from(e: HsmError) -> Self {
        CertError::Key(e.into())
    }
}
