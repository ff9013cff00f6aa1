//! Bring your own key, client side: read a private or AES key from a file and wrap it
//! for ImportKeyMaterial under the wrapping public key from GetParametersForImport, so
//! that nobody needs openssl to import a key.
//!
//! [`KeyMaterial::parse`] reads the key file (PEM or DER: PKCS#8, PKCS#1 RSA, SEC1 EC,
//! or a file of exactly 16 or 32 raw AES key bytes) into what hsmd takes: PKCS#8 DER
//! for key pairs, the raw bytes for AES. [`wrap`] wraps it with one of the
//! [`WrappingAlgorithm`]s. Secret bytes live in [`zeroize::Zeroizing`] buffers, and
//! nothing here prints or formats them.
//!
//! ```no_run
//! # async fn demo(client: hsm_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use hsm_client::import::{self, KeyMaterial};
//! use hsm_client::v1::{ImportKeyMaterialRequest, WrappingAlgorithm};
//!
//! let material = KeyMaterial::parse(&std::fs::read("key.pem")?)?;
//! let params = client
//!     .get_parameters_for_import("alias/byok", WrappingAlgorithm::Unspecified, None)
//!     .await?;
//! let algorithm = WrappingAlgorithm::try_from(params.wrapping_algorithm)?;
//! let wrapped = import::wrap(&params.public_key_der, algorithm, &material)?;
//! let key = client
//!     .import_key_material(ImportKeyMaterialRequest {
//!         key_id: params.key_id,
//!         import_token: params.import_token,
//!         encrypted_key_material: wrapped,
//!         valid_to: None,
//!         public_key_der: material.public_key_der()?.unwrap_or_default(),
//!     })
//!     .await?;
//! # let _ = key; Ok(()) }
//! ```

mod keyfile;
#[cfg(test)]
mod tests;
mod wrap;

pub use keyfile::KeyMaterial;
pub use wrap::{check_algorithm, public_key_spki_der, wrap, wrap_bytes};

pub use crate::v1::WrappingAlgorithm;

/// What can go wrong reading a key file or wrapping key material. Messages name the
/// file's format or the algorithm, never a byte of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The key file is not a key this client can read (or not one hsmd can import).
    #[error("{0}")]
    KeyFile(String),
    /// A public key file is not a SubjectPublicKeyInfo (PEM or DER).
    #[error("public key file: {0}")]
    PublicKey(String),
    /// The wrapping public key is not an RSA SubjectPublicKeyInfo.
    #[error("wrapping public key: {0}")]
    WrappingKey(String),
    /// The algorithm does not fit the material (or is UNSPECIFIED).
    #[error("{0}")]
    Algorithm(String),
    /// RSA-OAEP or AES key wrap refused the input (e.g. too long for the modulus).
    #[error("cannot wrap the key material: {0}")]
    Wrap(String),
}
