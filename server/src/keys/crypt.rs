//! Encryption rules applied: which key and algorithm may encrypt or decrypt what, the
//! AES-GCM blob, RSA-OAEP (public-key encryption in hsmd, decryption in the token, with
//! the host-side OAEP-SHA-256 decode where the token lacks it), and data keys.
//!
//! Plaintexts and data keys live in `Zeroizing` buffers here; none of them is logged.
//! Every failure to decrypt a ciphertext is `KeyError::DecryptionFailed`, whatever
//! went wrong, so the API is no padding oracle.

use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use super::manager::KeyManager;
use super::{KeyError, KeyRef, blob};
use crate::domain::record::KeyRecord;
use crate::domain::spec::{EncryptionAlgorithm, KeySpec, KeyUsage, MAX_PLAINTEXT};
use crate::encoding::OaepHash;
use crate::encoding::oaep;
use crate::hsm::OaepPath;

/// Largest AAD Encrypt, Decrypt and GenerateDataKey take.
pub(crate) const MAX_AAD: usize = 8192;

/// A plaintext data key and its blob under the master key.
pub(crate) struct DataKey {
    pub(crate) plaintext: Zeroizing<Vec<u8>>,
    pub(crate) blob: Vec<u8>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"<redacted>")
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

impl KeyManager {
    /// Encrypts with an ENABLED ENCRYPT_DECRYPT key: AES-GCM blob in the token, or
    /// RSA-OAEP with the public key here. Returns the algorithm used and the ciphertext.
    pub(crate) fn encrypt(
        &self,
        key: &KeyRecord,
        alg: Option<EncryptionAlgorithm>,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(EncryptionAlgorithm, Vec<u8>), KeyError> {
        let alg = self.check_crypt(key, alg)?;
        check_aad(alg, aad)?;
        if plaintext.is_empty() {
            return Err(KeyError::EmptyPlaintext);
        }
        let ct = match alg {
            EncryptionAlgorithm::SymmetricDefault => {
                if plaintext.len() > MAX_PLAINTEXT {
                    return Err(KeyError::PlaintextTooLarge {
                        len: plaintext.len(),
                        max: MAX_PLAINTEXT,
                        hint: " (encrypt larger data locally with a data key: GenerateDataKey)",
                    });
                }
                self.seal(key, plaintext, aad)?
            }
            _ => rsa_encrypt(key, alg, plaintext)?,
        };
        Ok((alg, ct))
    }

    /// Decrypts with a key the caller named. For RSA keys the algorithm is required.
    pub(crate) fn decrypt(
        &self,
        key: &KeyRecord,
        alg: Option<EncryptionAlgorithm>,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<(EncryptionAlgorithm, Zeroizing<Vec<u8>>), KeyError> {
        let alg = self.check_crypt(key, alg)?;
        check_aad(alg, aad)?;
        let pt = match alg {
            EncryptionAlgorithm::SymmetricDefault => {
                let parsed = blob::parse(ciphertext).map_err(KeyError::InvalidCiphertext)?;
                if parsed.key_id != key.id {
                    return Err(KeyError::InvalidCiphertext(format!(
                        "the blob was made with key {}, not with key {}",
                        parsed.key_id, key.id
                    )));
                }
                self.open(key, &parsed, aad)?
            }
            _ => self.rsa_decrypt(key, alg, ciphertext)?,
        };
        Ok((alg, pt))
    }

    /// The key a SYMMETRIC_DEFAULT blob names (Decrypt without a key id): KEY_NOT_FOUND
    /// if this hsmd has no such key (the api layer turns that into INVALID_CIPHERTEXT,
    /// or into the policy's refusal for a caller who may not learn which keys exist).
    pub(crate) fn blob_key(&self, ciphertext: &[u8]) -> Result<KeyRecord, KeyError> {
        let parsed = blob::parse(ciphertext).map_err(KeyError::InvalidCiphertext)?;
        self.resolve(&KeyRef::Id(parsed.key_id))
    }

    /// A fresh data key of `spec` (AES_256 or AES_128) from the token's RNG, and its
    /// blob under the AES master key `key`.
    pub(crate) fn generate_data_key(
        &self,
        key: &KeyRecord,
        spec: KeySpec,
        aad: &[u8],
    ) -> Result<DataKey, KeyError> {
        let len = match spec {
            KeySpec::Aes256 => 32,
            KeySpec::Aes128 => 16,
            other => {
                return Err(KeyError::DataKeySpecNotOffered(other));
            }
        };
        let alg = self.check_crypt(key, Some(EncryptionAlgorithm::SymmetricDefault))?;
        check_aad(alg, aad)?;
        let plaintext = Zeroizing::new(self.backend.random(len)?);
        let blob = self.seal(key, &plaintext, aad)?;
        Ok(DataKey { plaintext, blob })
    }

    /// Checks usage, algorithm and state, in the order Sign checks them; returns the
    /// algorithm to use (AES keys default to SYMMETRIC_DEFAULT).
    fn check_crypt(
        &self,
        key: &KeyRecord,
        alg: Option<EncryptionAlgorithm>,
    ) -> Result<EncryptionAlgorithm, KeyError> {
        key.require_usage(KeyUsage::EncryptDecrypt)?;
        let allowed = key.spec.encryption_algorithms();
        let offered: Vec<&str> = allowed
            .iter()
            .filter(|a| self.backend.capabilities().offers_encryption(**a))
            .map(|a| a.name())
            .collect();
        let alg = match alg {
            Some(a) => a,
            None if key.spec == KeySpec::Aes256 => EncryptionAlgorithm::SymmetricDefault,
            None => {
                return Err(KeyError::EncryptionAlgorithmRequired {
                    spec: key.spec,
                    offered: offered.join(", "),
                });
            }
        };
        if alg == EncryptionAlgorithm::RsaesPkcs1V15 {
            return Err(KeyError::AlgorithmNotAllowed {
                algorithm: format!(
                    "{} (PKCS#1 v1.5 decryption is a padding oracle and is never offered: use OAEP)",
                    alg.name()
                ),
                spec: key.spec.name(),
                allowed: offered.join(", "),
            });
        }
        if allowed.contains(&alg)
            && let Some(r) = self.backend.capabilities().refusal(alg.name())
        {
            return Err(r.into());
        }
        if !allowed.contains(&alg) || !self.backend.capabilities().offers_encryption(alg) {
            return Err(KeyError::AlgorithmNotAllowed {
                algorithm: alg.name().to_string(),
                spec: key.spec.name(),
                allowed: if offered.is_empty() {
                    "none on this token".into()
                } else {
                    offered.join(", ")
                },
            });
        }
        key.require_enabled(self.now())?;
        Ok(alg)
    }

    /// AES-GCM in the token with the key's current version, under a fresh IV; returns
    /// the blob.
    fn seal(&self, key: &KeyRecord, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let iv = self.backend.random(blob::IV_LEN)?;
        let version = key.current_version();
        let header = blob::header(key.id, version.version);
        let ct = self.backend.aes_gcm_encrypt(
            version.object_id,
            &iv,
            &blob::gcm_aad(&header, aad),
            plaintext,
        )?;
        if ct.len() != plaintext.len() + blob::TAG_LEN {
            return Err(KeyError::Internal(format!(
                "AES-GCM output is {} bytes for {} bytes of plaintext",
                ct.len(),
                plaintext.len()
            )));
        }
        Ok(blob::assemble(&header, &iv, &ct))
    }

    /// Opens a parsed blob in the token with the key version it names; a wrong tag is
    /// DecryptionFailed, a version the key never had INVALID_CIPHERTEXT.
    fn open(
        &self,
        key: &KeyRecord,
        parsed: &blob::Blob<'_>,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let version = key.version(parsed.key_version).ok_or_else(|| {
            KeyError::InvalidCiphertext(format!(
                "the blob names version {} of key {}, which has versions 1..{}",
                parsed.key_version,
                key.id,
                key.current_version().version
            ))
        })?;
        let aad = blob::gcm_aad(parsed.header, aad);
        Ok(self.backend.aes_gcm_decrypt(
            version.object_id,
            parsed.iv,
            &aad,
            parsed.ciphertext_and_tag,
        )?)
    }

    /// RSA-OAEP decryption in the token (host-side decode for SHA-256 where the token
    /// lacks it). A ciphertext that is not exactly modulus-sized never reaches the token.
    fn rsa_decrypt(
        &self,
        key: &KeyRecord,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let k = key.spec.rsa_bits().unwrap_or(0) as usize / 8;
        if ciphertext.len() != k {
            return Err(KeyError::DecryptionFailed);
        }
        let path = self.backend.capabilities().encryption.oaep_sha256;
        let result = match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => {
                self.backend
                    .rsa_oaep_decrypt(key.id, OaepHash::Sha1, ciphertext)?
            }
            EncryptionAlgorithm::RsaesOaepSha256 if path == OaepPath::Token => self
                .backend
                .rsa_oaep_decrypt(key.id, OaepHash::Sha256, ciphertext)?,
            EncryptionAlgorithm::RsaesOaepSha256 => {
                let raw = self.backend.rsa_raw_decrypt(key.id, ciphertext)?;
                let em = oaep::left_pad(&raw, k).ok_or(KeyError::DecryptionFailed)?;
                oaep::decode::<sha2::Sha256>(&em, b"").map_err(|_| KeyError::DecryptionFailed)?
            }
            other => {
                return Err(KeyError::Internal(format!(
                    "{other} reached RSA decryption"
                )));
            }
        };
        Ok(result)
    }
}

fn check_aad(alg: EncryptionAlgorithm, aad: &[u8]) -> Result<(), KeyError> {
    if alg != EncryptionAlgorithm::SymmetricDefault && !aad.is_empty() {
        return Err(KeyError::AadNotAllowed {
            algorithm: alg.name(),
        });
    }
    if aad.len() > MAX_AAD {
        return Err(KeyError::AadTooLarge {
            len: aad.len(),
            max: MAX_AAD,
        });
    }
    Ok(())
}

/// RSA-OAEP encryption with the key's public half (kept in the store as SPKI).
fn rsa_encrypt(
    key: &KeyRecord,
    alg: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let der = key
        .public_key_der
        .as_deref()
        .ok_or_else(|| KeyError::Internal(format!("key {} has no public key", key.id)))?;
    oaep_encrypt(der, alg, plaintext)
}

/// RSAES-OAEP (RFC 8017) with SHA-1 or SHA-256, MGF1 with the same hash and an empty
/// label, under a SubjectPublicKeyInfo: the standard scheme, so any OAEP implementation
/// holding the private key decrypts it.
pub(crate) fn oaep_encrypt(
    spki_der: &[u8],
    alg: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let public = rsa::RsaPublicKey::from_public_key_der(spki_der)
        .map_err(|e| KeyError::Internal(format!("stored RSA public key: {e}")))?;
    let (h_len, padding) = match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => (20, rsa::Oaep::new::<sha1::Sha1>()),
        EncryptionAlgorithm::RsaesOaepSha256 => (32, rsa::Oaep::new::<sha2::Sha256>()),
        other => {
            return Err(KeyError::Internal(format!(
                "{other} reached RSA encryption"
            )));
        }
    };
    let max = public.size().saturating_sub(2 * h_len + 2);
    if plaintext.len() > max {
        return Err(KeyError::PlaintextTooLarge {
            len: plaintext.len(),
            max,
            hint: " for this key and algorithm (RSA-OAEP carries at most modulus bytes - 2 x hash length - 2)",
        });
    }
    public
        .encrypt(&mut rsa::rand_core::OsRng, padding, plaintext)
        .map_err(|e| KeyError::Internal(format!("RSA-OAEP encryption: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_rules() {
        use EncryptionAlgorithm::*;
        assert!(check_aad(SymmetricDefault, b"ctx").is_ok());
        assert!(check_aad(SymmetricDefault, &[0; MAX_AAD + 1]).is_err());
        assert!(check_aad(RsaesOaepSha256, b"label").is_err());
        assert!(check_aad(RsaesOaepSha1, b"").is_ok());
    }

    /// hsmd's public-key OAEP against an independent implementation: `openssl pkeyutl
    /// -decrypt` with an openssl-made private key opens it, for SHA-1 and SHA-256, and
    /// only with the matching hash.
    #[test]
    fn host_side_oaep_is_what_openssl_decrypts() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is needed: apt-get install -y openssl");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        let (ok, err) = openssl(&[
            &os("genpkey"),
            &os("-algorithm"),
            &os("RSA"),
            &os("-pkeyopt"),
            &os("rsa_keygen_bits:2048"),
            &os("-out"),
            p("k.pem").as_os_str(),
        ]);
        assert!(ok, "{err}");
        let (ok, err) = openssl(&[
            &os("pkey"),
            &os("-in"),
            p("k.pem").as_os_str(),
            &os("-pubout"),
            &os("-outform"),
            &os("DER"),
            &os("-out"),
            p("pub.der").as_os_str(),
        ]);
        assert!(ok, "{err}");
        let der = std::fs::read(p("pub.der")).unwrap();
        let msg = b"standard OAEP from hsmd";
        for (alg, md, other) in [
            (EncryptionAlgorithm::RsaesOaepSha1, "sha1", "sha256"),
            (EncryptionAlgorithm::RsaesOaepSha256, "sha256", "sha1"),
        ] {
            let ct = oaep_encrypt(&der, alg, msg).unwrap();
            assert_eq!(ct.len(), 256);
            std::fs::write(p("ct"), &ct).unwrap();
            let decrypt = |md: &str| {
                let _ = std::fs::remove_file(p("pt"));
                let (ok, err) = openssl(&[
                    &os("pkeyutl"),
                    &os("-decrypt"),
                    &os("-inkey"),
                    p("k.pem").as_os_str(),
                    &os("-pkeyopt"),
                    &os("rsa_padding_mode:oaep"),
                    &os("-pkeyopt"),
                    &os(&format!("rsa_oaep_md:{md}")),
                    &os("-pkeyopt"),
                    &os(&format!("rsa_mgf1_md:{md}")),
                    &os("-in"),
                    p("ct").as_os_str(),
                    &os("-out"),
                    p("pt").as_os_str(),
                ]);
                (ok, err, std::fs::read(p("pt")).unwrap_or_default())
            };
            let (ok, err, pt) = decrypt(md);
            assert!(ok, "{md}: {err}");
            assert_eq!(pt, msg, "{md}");
            let (ok, _, pt) = decrypt(other);
            assert!(!ok || pt != msg, "{md} ciphertext opened as {other}");
        }
        let too_big = oaep_encrypt(&der, EncryptionAlgorithm::RsaesOaepSha256, &[0; 191]);
        assert!(matches!(
            too_big,
            Err(KeyError::PlaintextTooLarge { max: 190, .. })
        ));
    }

    #[test]
    fn data_key_debug_is_redacted() {
        let k = DataKey {
            plaintext: Zeroizing::new(vec![0xab; 32]),
            blob: vec![1; 81],
        };
        let text = format!("{k:?}");
        assert!(text.contains("redacted") && !text.contains("171"), "{text}");
    }
}
