//! Encryption and decryption in the token: AES-GCM with a key's secret object, RSA-OAEP
//! (and the raw RSA private operation for the host-side OAEP-SHA-256 decode) with a
//! key's private object, and the start-up probe that tries each of them on throw-away
//! session keys to learn which path every algorithm takes on this token.
//!
//! A decryption the token refuses because of the ciphertext is `HsmError::DecryptFailed`,
//! one variant whatever the token's return value: no padding oracle above this layer.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::error::is_decrypt_failure;
use super::probe::{EncryptionProbe, OaepPath};
use super::{HsmError, Pkcs11Backend};
use crate::encoding::OaepHash;

/// GCM tag length in bits.
const TAG_BITS: u64 = 128;

/// CKM_RSA_PKCS_OAEP with `hash`, MGF1 with the same hash and an empty label. Public
/// so the benchmark's raw baseline uses exactly this mechanism.
pub fn oaep(hash: OaepHash) -> Mechanism<'static> {
    let (h, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    // SoftHSM2 takes only an empty source (no label): PkcsOaepSource::empty().
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty()))
}

/// CKM_AES_GCM with `iv`, `aad` and a 128-bit tag. Public so the benchmark's raw
/// baseline uses exactly this mechanism.
pub fn aes_gcm<'a>(iv: &'a mut [u8], aad: &'a [u8]) -> cryptoki::error::Result<Mechanism<'a>> {
    Ok(Mechanism::AesGcm(GcmParams::new(iv, aad, TAG_BITS.into())?))
}

impl Pkcs11Backend {
    /// AES-GCM encryption with the key's secret object: returns ciphertext || tag.
    pub(crate) fn aes_gcm_encrypt(
        &self,
        id: Uuid,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.retry_if_missing(id, |objs| {
            self.with_session("C_Encrypt (AES-GCM)", |s| {
                let mut iv = iv.to_vec();
                s.encrypt(&aes_gcm(&mut iv, aad)?, objs.private, plaintext)
            })
        })
    }

    /// AES-GCM decryption of ciphertext || tag; a wrong tag is `DecryptFailed`.
    pub(crate) fn aes_gcm_decrypt(
        &self,
        id: Uuid,
        iv: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.retry_if_missing(id, |objs| {
            self.decrypt_op("C_Decrypt (AES-GCM)", |s| {
                let mut iv = iv.to_vec();
                s.decrypt(&aes_gcm(&mut iv, aad)?, objs.private, ciphertext_and_tag)
            })
        })
    }

    /// RSA-OAEP decryption in the token (empty label, MGF1 with the same hash).
    pub(crate) fn rsa_oaep_decrypt(
        &self,
        id: Uuid,
        hash: OaepHash,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.retry_if_missing(id, |objs| {
            self.decrypt_op("C_Decrypt (RSA-OAEP)", |s| {
                s.decrypt(&oaep(hash), objs.private, ciphertext)
            })
        })
    }

    /// The raw RSA private operation (CKM_RSA_X_509) in the token; the caller decodes
    /// the padding. The output is as the token gives it (possibly without leading zeros).
    pub(crate) fn rsa_raw_decrypt(
        &self,
        id: Uuid,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.retry_if_missing(id, |objs| {
            self.decrypt_op("C_Decrypt (RSA X.509)", |s| {
                s.decrypt(&Mechanism::RsaX509, objs.private, ciphertext)
            })
        })
    }

    /// Runs one C_Decrypt on a pooled session (`with_session`). Refusals because of the
    /// ciphertext become `DecryptFailed`.
    fn decrypt_op(
        &self,
        what: &'static str,
        mut f: impl FnMut(&Session) -> cryptoki::error::Result<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_session(what, |s| match f(s) {
            Ok(v) => Ok(Some(Zeroizing::new(v))),
            Err(e) if is_decrypt_failure(&e) => Ok(None),
            Err(e) => Err(e),
        })?
        .ok_or(HsmError::DecryptFailed)
    }
}

/// Tries every encryption path on throw-away keys (session objects where the token
/// makes them; destroyed before returning).
/// A failure of the probe itself only means "not offered".
pub(crate) fn probe_encryption(s: &Session, mechs: &[MechanismType]) -> EncryptionProbe {
    let mut probe = EncryptionProbe::default();
    if mechs.contains(&MechanismType::AES_KEY_GEN) && mechs.contains(&MechanismType::AES_GCM) {
        probe.aes_gcm = probe_aes_gcm(s).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "AES-GCM probe failed: SYMMETRIC_DEFAULT not offered");
            false
        });
    }
    if mechs.contains(&MechanismType::RSA_PKCS_KEY_PAIR_GEN) {
        match probe_rsa(s, mechs) {
            Ok((sha1, sha256)) => {
                probe.oaep_sha1 = sha1;
                probe.oaep_sha256 = sha256;
            }
            Err(e) => tracing::warn!(error = %e, "RSA-OAEP probe failed: OAEP not offered"),
        }
    }
    probe
}

fn probe_aes_gcm(s: &Session) -> Result<bool, String> {
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .map_err(|e| format!("C_GenerateKey: {e}"))?;
    let result = (|| -> Result<bool, String> {
        let msg = b"hsmd probe";
        let mut iv = [3u8; 12];
        let ct = s
            .encrypt(
                &aes_gcm(&mut iv, b"aad").map_err(|e| e.to_string())?,
                key,
                msg,
            )
            .map_err(|e| format!("C_Encrypt: {e}"))?;
        let mut iv = [3u8; 12];
        let pt = s
            .decrypt(
                &aes_gcm(&mut iv, b"aad").map_err(|e| e.to_string())?,
                key,
                &ct,
            )
            .map_err(|e| format!("C_Decrypt: {e}"))?;
        Ok(pt == msg && ct.len() == msg.len() + 16)
    })();
    let _ = s.destroy_object(key);
    result
}

/// (OAEP-SHA-1 in the token works, how OAEP-SHA-256 can be decrypted).
fn probe_rsa(s: &Session, mechs: &[MechanismType]) -> Result<(bool, OaepPath), String> {
    let (public, private) = super::token_probe::probe_key_pair(
        s,
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::ModulusBits(1024u64.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
        ],
        &[
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Decrypt(true),
        ],
    )
    .map_err(|e| format!("C_GenerateKeyPair: {e}"))?;
    let result = probe_rsa_key(s, mechs, public, private);
    super::token_probe::destroy(s, &[private, public]);
    result
}

fn probe_rsa_key(
    s: &Session,
    mechs: &[MechanismType],
    public: ObjectHandle,
    private: ObjectHandle,
) -> Result<(bool, OaepPath), String> {
    let Some(crate::encoding::PublicKeyMaterial::Rsa { modulus, exponent }) =
        super::objects::public_key(s, crate::domain::spec::KeySpec::Rsa2048, public)
            .map_err(|e| format!("C_GetAttributeValue: {e}"))?
    else {
        return Err("probe key has no modulus".into());
    };
    let key = crate::encoding::public::rsa_public(&modulus, &exponent)
        .map_err(|e| format!("probe public key: {e}"))?;
    let msg = b"hsmd probe";
    let mut rng = rsa::rand_core::OsRng;
    let oaep_mech = mechs.contains(&MechanismType::RSA_PKCS_OAEP);
    let sha1 = oaep_mech && {
        let ct = key
            .encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), msg)
            .map_err(|e| e.to_string())?;
        s.decrypt(&oaep(OaepHash::Sha1), private, &ct)
            .is_ok_and(|pt| pt == msg)
    };
    let ct = key
        .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), msg)
        .map_err(|e| e.to_string())?;
    if oaep_mech
        && s.decrypt(&oaep(OaepHash::Sha256), private, &ct)
            .is_ok_and(|pt| pt == msg)
    {
        return Ok((sha1, OaepPath::Token));
    }
    let host = mechs.contains(&MechanismType::RSA_X_509)
        && s.decrypt(&Mechanism::RsaX509, private, &ct)
            .ok()
            .and_then(|raw| {
                let em = crate::encoding::oaep::left_pad(&raw, modulus.len())?;
                crate::encoding::oaep::decode::<sha2::Sha256>(&em, b"").ok()
            })
            .is_some_and(|pt| pt.as_slice() == msg);
    Ok((
        sha1,
        if host {
            OaepPath::HostDecode
        } else {
            OaepPath::Unavailable
        },
    ))
}
