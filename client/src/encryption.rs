//! Typed calls for encryption: Encrypt, Decrypt and data keys.
//!
//! Plaintexts and data keys come back in [`Zeroizing`] buffers, wiped when dropped; the
//! response messages that carried them wipe their own copies too.

use zeroize::Zeroizing;

use crate::calls::retried;
use crate::client::Client;
use crate::error::ClientError;
use crate::v1::{
    DecryptRequest, EncryptRequest, EncryptResponse, EncryptionAlgorithm, GenerateDataKeyRequest,
    GenerateDataKeyWithoutPlaintextRequest, KeySpec,
};

/// What Decrypt answered.
pub struct Decrypted {
    /// UUID of the key that decrypted.
    pub key_id: String,
    /// The algorithm used (proto value of [`EncryptionAlgorithm`]).
    pub algorithm: i32,
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// A data key from GenerateDataKey.
pub struct DataKey {
    /// UUID of the master key.
    pub key_id: String,
    /// AES_256 or AES_128 (proto value of [`KeySpec`]).
    pub key_spec: i32,
    /// The plaintext data key; empty from GenerateDataKeyWithoutPlaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The data key encrypted under the master key (a SYMMETRIC_DEFAULT blob).
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("key_id", &self.key_id)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish()
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("plaintext", &"<redacted>")
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

fn alg(a: Option<EncryptionAlgorithm>) -> i32 {
    a.map(|a| a as i32).unwrap_or(0)
}

impl Client {
    /// Encrypts `plaintext` with `key_id`. `algorithm` may be `None` for AES keys
    /// (SYMMETRIC_DEFAULT); RSA keys need RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1.
    pub async fn encrypt(
        &self,
        key_id: &str,
        algorithm: Option<EncryptionAlgorithm>,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<EncryptResponse, ClientError> {
        let req = EncryptRequest {
            key_id: key_id.to_string(),
            plaintext: plaintext.to_vec(),
            encryption_algorithm: alg(algorithm),
            aad: aad.to_vec(),
        };
        Ok(retried!(self, "Encrypt", keys, encrypt, req))
    }

    /// Decrypts a ciphertext. `key_id` may be `None` for SYMMETRIC_DEFAULT blobs (they
    /// name their key).
    pub async fn decrypt(
        &self,
        key_id: Option<&str>,
        algorithm: Option<EncryptionAlgorithm>,
        ciphertext: Vec<u8>,
        aad: &[u8],
    ) -> Result<Decrypted, ClientError> {
        let req = DecryptRequest {
            key_id: key_id.unwrap_or_default().to_string(),
            ciphertext,
            encryption_algorithm: alg(algorithm),
            aad: aad.to_vec(),
        };
        let mut resp = retried!(self, "Decrypt", keys, decrypt, req);
        Ok(Decrypted {
            key_id: std::mem::take(&mut resp.key_id),
            algorithm: resp.encryption_algorithm,
            plaintext: Zeroizing::new(std::mem::take(&mut resp.plaintext)),
        })
    }

    /// A fresh data key under the AES master key `key_id`: plaintext and blob (or, with
    /// `with_plaintext` false, the blob only).
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        key_spec: KeySpec,
        aad: &[u8],
        with_plaintext: bool,
    ) -> Result<DataKey, ClientError> {
        if !with_plaintext {
            let req = GenerateDataKeyWithoutPlaintextRequest {
                key_id: key_id.to_string(),
                key_spec: key_spec as i32,
                aad: aad.to_vec(),
            };
            let resp = retried!(
                self,
                "GenerateDataKeyWithoutPlaintext",
                keys,
                generate_data_key_without_plaintext,
                req
            );
            return Ok(DataKey {
                key_id: resp.key_id,
                key_spec: resp.key_spec,
                plaintext: Zeroizing::new(Vec::new()),
                blob: resp.ciphertext_blob,
            });
        }
        let req = GenerateDataKeyRequest {
            key_id: key_id.to_string(),
            key_spec: key_spec as i32,
            aad: aad.to_vec(),
        };
        let mut resp = retried!(self, "GenerateDataKey", keys, generate_data_key, req);
        Ok(DataKey {
            key_id: std::mem::take(&mut resp.key_id),
            key_spec: resp.key_spec,
            plaintext: Zeroizing::new(std::mem::take(&mut resp.plaintext)),
            blob: std::mem::take(&mut resp.ciphertext_blob),
        })
    }
}
