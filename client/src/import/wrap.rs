//! Wrapping key material under hsmd's wrapping public key, as WrappingAlgorithm says:
//! RSAES-OAEP alone (AES keys), or a fresh AES-256 key under RSAES-OAEP followed by the
//! material under that key with AES key wrap with padding (RFC 5649), the same layout
//! as AWS KMS and as `openssl pkeyutl` + `openssl enc -id-aes256-wrap-pad` produce.

use rand::RngCore as _;
use rand::rngs::OsRng;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::{Oaep, RsaPublicKey};
use zeroize::Zeroizing;

use super::{ImportError, KeyMaterial, WrappingAlgorithm};

/// Wraps `material` under the wrapping public key (SubjectPublicKeyInfo DER, from
/// GetParametersForImport) with `algorithm`: the bytes for ImportKeyMaterialRequest's
/// `encrypted_key_material`. RSAES_OAEP_* wrap AES keys only; UNSPECIFIED is refused
/// (use the algorithm GetParametersForImport answered with).
pub fn wrap(
    wrapping_public_key_der: &[u8],
    algorithm: WrappingAlgorithm,
    material: &KeyMaterial,
) -> Result<Vec<u8>, ImportError> {
    check_algorithm(algorithm, material)?;
    wrap_bytes(wrapping_public_key_der, algorithm, material.as_bytes())
}

/// Whether `algorithm` can wrap `material`: RSAES_OAEP_* wrap AES keys only.
/// UNSPECIFIED passes (the server will pick an algorithm that wraps anything).
pub fn check_algorithm(
    algorithm: WrappingAlgorithm,
    material: &KeyMaterial,
) -> Result<(), ImportError> {
    if is_oaep_only(algorithm) && !material.is_symmetric() {
        return Err(ImportError::Algorithm(format!(
            "{} wraps AES keys only; wrap {} key material with RSA_AES_KEY_WRAP_SHA_256 \
             or RSA_AES_KEY_WRAP_SHA_1",
            short_name(algorithm),
            material.spec().as_str_name()
        )));
    }
    Ok(())
}

/// Wraps arbitrary bytes as [`wrap`] does, without checking that they are a key (for
/// callers that build the material themselves).
pub fn wrap_bytes(
    wrapping_public_key_der: &[u8],
    algorithm: WrappingAlgorithm,
    material: &[u8],
) -> Result<Vec<u8>, ImportError> {
    let public = RsaPublicKey::from_public_key_der(wrapping_public_key_der).map_err(|e| {
        ImportError::WrappingKey(format!("not an RSA SubjectPublicKeyInfo (DER): {e}"))
    })?;
    match algorithm {
        WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaesOaepSha256 => {
            oaep(&public, algorithm, material)
        }
        WrappingAlgorithm::RsaAesKeyWrapSha1 | WrappingAlgorithm::RsaAesKeyWrapSha256 => {
            let mut kek = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut kek[..]);
            let mut out = oaep(&public, algorithm, &kek[..])?;
            // try_from a slice: no unzeroized copy of the key on the stack; the key
            // schedule is wiped on drop (aes's `zeroize` feature, see Cargo.toml).
            let wrapped = aes_kw::KekAes256::try_from(&kek[..])
                .and_then(|kek| kek.wrap_with_padding_vec(material))
                .map_err(|e| ImportError::Wrap(format!("AES key wrap: {e}")))?;
            out.extend_from_slice(&wrapped);
            Ok(out)
        }
        WrappingAlgorithm::Unspecified => Err(ImportError::Algorithm(
            "no wrapping algorithm: name one (RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, \
             RSA_AES_KEY_WRAP_SHA_1, RSA_AES_KEY_WRAP_SHA_256)"
                .into(),
        )),
    }
}

/// A public key file's SubjectPublicKeyInfo DER: PEM ("BEGIN PUBLIC KEY") or DER.
pub fn public_key_spki_der(file: &[u8]) -> Result<Vec<u8>, ImportError> {
    let bad = |e: String| ImportError::PublicKey(e);
    let der = match std::str::from_utf8(file) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN ") => {
            let (label, der) = der::pem::decode_vec(text.trim().as_bytes())
                .map_err(|e| bad(format!("malformed PEM: {e}")))?;
            if label != "PUBLIC KEY" {
                return Err(bad(format!(
                    "PEM label {label:?}: expected \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
                )));
            }
            der
        }
        _ => file.to_vec(),
    };
    spki::SubjectPublicKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| bad(format!("not a SubjectPublicKeyInfo: {e}")))?;
    Ok(der)
}

/// RSAES-OAEP with the algorithm's hash for both the digest and MGF1, empty label.
fn oaep(
    public: &RsaPublicKey,
    algorithm: WrappingAlgorithm,
    data: &[u8],
) -> Result<Vec<u8>, ImportError> {
    let padding = if uses_sha1(algorithm) {
        Oaep::new::<sha1::Sha1>()
    } else {
        Oaep::new::<sha2::Sha256>()
    };
    public
        .encrypt(&mut OsRng, padding, data)
        .map_err(|e| ImportError::Wrap(format!("RSA-OAEP ({} bytes): {e}", data.len())))
}

fn is_oaep_only(algorithm: WrappingAlgorithm) -> bool {
    matches!(
        algorithm,
        WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaesOaepSha256
    )
}

fn uses_sha1(algorithm: WrappingAlgorithm) -> bool {
    matches!(
        algorithm,
        WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaAesKeyWrapSha1
    )
}

/// The name without the proto prefix, as AWS KMS and hsmctl spell it.
pub(crate) fn short_name(algorithm: WrappingAlgorithm) -> &'static str {
    let name = algorithm.as_str_name();
    name.strip_prefix("WRAPPING_ALGORITHM_").unwrap_or(name)
}
