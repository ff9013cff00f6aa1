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

pub mod build;
pub mod chain;
pub mod ops;
pub mod san;
pub mod sigalg;
pub mod subject;

use uuid::Uuid;

use crate::hsm::HsmError;
use crate::keys::KeyError;
use crate::store::StoreError;

/// Every way a certificate operation can fail. Key errors (not found, disabled, wrong
/// usage, algorithm not allowed...) keep their own variant and reason.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The subject string is malformed; the message names the bad part.
    #[error("invalid subject: {0}")]
    Subject(String),
    /// A subject alternative name is malformed; the message names the entry.
    #[error("invalid subject alternative name: {0}")]
    San(String),
    /// Any other bad input (key usage for the key type, validity days...).
    #[error("{0}")]
    InvalidArgument(String),
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
    /// Stable reason string (google.rpc.ErrorInfo.reason).
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Subject(_) => "INVALID_SUBJECT",
            CertError::San(_) => "INVALID_SAN",
            CertError::InvalidArgument(_) => "INVALID_ARGUMENT",
            CertError::InvalidCertificate(_) => "INVALID_CERTIFICATE",
            CertError::KeyMismatch { .. } => "CERTIFICATE_KEY_MISMATCH",
            CertError::NotFound(_) => "CERTIFICATE_NOT_FOUND",
            CertError::Key(k) => k.reason(),
        }
    }

    /// An encoding failure of a structure hsmd built itself: a bug, not bad input.
    pub fn encoding(what: &str, e: der::Error) -> CertError {
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
