//! Key files for import: PEM or DER, PKCS#8, PKCS#1 RSA or SEC1 EC private keys (the
//! latter two converted to PKCS#8, the form hsmd unwraps), or raw AES key bytes.
//!
//! Every key pair is parsed with its own crate (rsa, p256, p384, ed25519-dalek) so a
//! malformed or unsupported key is refused here, with a message that says why, rather
//! than by the server after a round trip; the same parse derives the public half.

use der::asn1::ObjectIdentifier;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, PrivateKeyInfo};
use rsa::traits::PublicKeyParts as _;
use zeroize::Zeroizing;

use super::ImportError;
use crate::v1::KeySpec;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Key material ready to wrap: a PKCS#8 private key (DER) for RSA, EC and Ed25519 keys,
/// the raw key bytes for AES keys. Its `Debug` shows the spec and length only.
pub struct KeyMaterial {
    spec: KeySpec,
    bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("spec", &self.spec)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

fn bad(message: impl Into<String>) -> ImportError {
    ImportError::KeyFile(message.into())
}

impl KeyMaterial {
    /// Reads a key file's contents: PEM ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE
    /// KEY", an "EC PARAMETERS" block before it is skipped) or DER (PKCS#8, PKCS#1,
    /// SEC1), or exactly 16 or 32 bytes that are not a DER key: a raw AES key.
    /// RSA keys must have a 2048-, 3072- or 4096-bit modulus, EC keys be on P-256 or
    /// P-384 (the specs hsmd has).
    pub fn parse(file: &[u8]) -> Result<KeyMaterial, ImportError> {
        if let Some(text) = pem_text(file) {
            return from_pem(text);
        }
        if let Some(material) = from_der(file)? {
            return Ok(material);
        }
        match file.len() {
            16 | 32 => KeyMaterial::aes(file),
            n => Err(bad(format!(
                "not a key file: neither PEM, nor a DER private key (PKCS#8, PKCS#1, SEC1), \
                 nor a raw AES key of 16 or 32 bytes ({n} bytes); a key in hex converts \
                 with `xxd -r -p`"
            ))),
        }
    }

    /// Raw AES key bytes (16 for AES_128, 32 for AES_256).
    pub fn aes(bytes: &[u8]) -> Result<KeyMaterial, ImportError> {
        let spec = match bytes.len() {
            16 => KeySpec::Aes128,
            32 => KeySpec::Aes256,
            n => return Err(bad(format!("an AES key is 16 or 32 bytes, not {n}"))),
        };
        Ok(KeyMaterial {
            spec,
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// A PKCS#8 private key (DER) of a spec hsmd has.
    pub fn pkcs8(der: &[u8]) -> Result<KeyMaterial, ImportError> {
        let spec = pkcs8_spec(der)?;
        let material = KeyMaterial {
            spec,
            bytes: Zeroizing::new(der.to_vec()),
        };
        // Parse it once with its own crate: a broken key is refused here.
        material.public_key_der()?;
        Ok(material)
    }

    /// The key spec the material is for (the EXTERNAL key must have been created with it).
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// True for AES keys (raw bytes), false for key pairs (PKCS#8).
    pub fn is_symmetric(&self) -> bool {
        matches!(self.spec, KeySpec::Aes128 | KeySpec::Aes256)
    }

    /// The bytes to wrap: PKCS#8 DER, or the raw AES key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The public half as SubjectPublicKeyInfo DER (what ImportKeyMaterialRequest's
    /// `public_key_der` takes); `None` for AES keys.
    pub fn public_key_der(&self) -> Result<Option<Vec<u8>>, ImportError> {
        let der = &self.bytes[..];
        let spki = match self.spec {
            KeySpec::Aes128 | KeySpec::Aes256 => return Ok(None),
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
                    .map_err(|e| bad(format!("bad RSA private key: {e}")))?;
                key.validate()
                    .map_err(|e| bad(format!("bad RSA private key: {e}")))?;
                key.to_public_key().to_public_key_der()
            }
            KeySpec::EcP256 => p256::SecretKey::from_pkcs8_der(der)
                .map_err(|e| bad(format!("bad P-256 private key: {e}")))?
                .public_key()
                .to_public_key_der(),
            KeySpec::EcP384 => p384::SecretKey::from_pkcs8_der(der)
                .map_err(|e| bad(format!("bad P-384 private key: {e}")))?
                .public_key()
                .to_public_key_der(),
            KeySpec::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map_err(|e| bad(format!("bad Ed25519 private key: {e}")))?
                .verifying_key()
                .to_public_key_der(),
            other => {
                return Err(bad(format!(
                    "{} keys cannot be imported",
                    other.as_str_name()
                )));
            }
        };
        let spki = spki.map_err(|e| bad(format!("cannot encode the public key: {e}")))?;
        Ok(Some(spki.into_vec()))
    }
}

/// The text of a PEM file, if it is one.
fn pem_text(file: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(file).ok()?;
    text.trim_start().starts_with("-----BEGIN ").then_some(text)
}

/// The first private key block of a PEM file.
fn from_pem(text: &str) -> Result<KeyMaterial, ImportError> {
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block["-----BEGIN ".len()..]
            .find("-----")
            .ok_or_else(|| bad("malformed PEM: unterminated BEGIN line"))?;
        let label = &block["-----BEGIN ".len().."-----BEGIN ".len() + label_end];
        let end_line = format!("-----END {label}-----");
        let end = block
            .find(&end_line)
            .ok_or_else(|| bad(format!("malformed PEM: no {end_line:?}")))?;
        let (pem, after) = block.split_at(end + end_line.len());
        rest = after;
        let label = match label {
            "EC PARAMETERS" => continue,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad("the private key is encrypted: decrypt it first \
                     (openssl pkcs8 -in F -out plain.pem)"));
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => label,
            other => return Err(bad(format!("not a private key: PEM label {other:?}"))),
        };
        let (_, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| bad(format!("malformed PEM {label:?}: {e}")))?;
        let der = Zeroizing::new(der);
        return match label {
            "PRIVATE KEY" => KeyMaterial::pkcs8(&der),
            "RSA PRIVATE KEY" => from_pkcs1(&der),
            _ => from_sec1(&der),
        };
    }
    Err(bad("no private key in the PEM file"))
}

/// A DER private key in any of the three forms; `None` if it is none of them.
fn from_der(der: &[u8]) -> Result<Option<KeyMaterial>, ImportError> {
    if PrivateKeyInfo::try_from(der).is_ok() {
        return KeyMaterial::pkcs8(der).map(Some);
    }
    if rsa::pkcs1::RsaPrivateKey::try_from(der).is_ok() {
        return from_pkcs1(der).map(Some);
    }
    if p256::SecretKey::from_sec1_der(der).is_ok() || p384::SecretKey::from_sec1_der(der).is_ok() {
        return from_sec1(der).map(Some);
    }
    Ok(None)
}

/// The spec of a PKCS#8 key, from its algorithm (and, for RSA, its modulus size).
fn pkcs8_spec(der: &[u8]) -> Result<KeySpec, ImportError> {
    let info =
        PrivateKeyInfo::try_from(der).map_err(|e| bad(format!("bad PKCS#8 private key: {e}")))?;
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        return Ok(KeySpec::Ed25519);
    }
    if oid == OID_EC {
        return match info.algorithm.parameters_oid() {
            Ok(OID_P256) => Ok(KeySpec::EcP256),
            Ok(OID_P384) => Ok(KeySpec::EcP384),
            Ok(curve) => Err(bad(format!(
                "EC curve {curve} cannot be imported: hsmd has P-256 and P-384"
            ))),
            Err(e) => Err(bad(format!("EC private key without a named curve: {e}"))),
        };
    }
    if oid != OID_RSA {
        return Err(bad(format!(
            "private key algorithm {oid} cannot be imported (RSA, EC P-256/P-384, Ed25519)"
        )));
    }
    let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
        .map_err(|e| bad(format!("bad RSA private key: {e}")))?;
    match key.n().bits() {
        2048 => Ok(KeySpec::Rsa2048),
        3072 => Ok(KeySpec::Rsa3072),
        4096 => Ok(KeySpec::Rsa4096),
        bits => Err(bad(format!(
            "an RSA key of {bits} bits cannot be imported: hsmd has 2048, 3072 and 4096"
        ))),
    }
}

/// A PKCS#1 RSAPrivateKey, converted to PKCS#8.
fn from_pkcs1(der: &[u8]) -> Result<KeyMaterial, ImportError> {
    let key = rsa::RsaPrivateKey::from_pkcs1_der(der)
        .map_err(|e| bad(format!("bad PKCS#1 RSA private key: {e}")))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| bad(format!("cannot convert the RSA key to PKCS#8: {e}")))?;
    KeyMaterial::pkcs8(pkcs8.as_bytes())
}

/// A SEC1 ECPrivateKey on P-256 or P-384 (by its curve parameter), converted to PKCS#8.
fn from_sec1(der: &[u8]) -> Result<KeyMaterial, ImportError> {
    let pkcs8 = if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
        key.to_pkcs8_der()
    } else if let Ok(key) = p384::SecretKey::from_sec1_der(der) {
        key.to_pkcs8_der()
    } else {
        return Err(bad(
            "bad SEC1 EC private key, or not on P-256 or P-384 (the curves hsmd has)",
        ));
    };
    let pkcs8 = pkcs8.map_err(|e| bad(format!("cannot convert the EC key to PKCS#8: {e}")))?;
    KeyMaterial::pkcs8(pkcs8.as_bytes())
}
