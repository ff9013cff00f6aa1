//! Step 3 of an import: the unwrapped material, still a session object, is checked
//! against the key's spec (length, size, curve, exponent), its halves must work together,
//! and a public key the caller sent must be the material's.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{ImportRefused, Inspected, Scratch, Target, ck};
use crate::domain::spec::{KeySpec, KeyUsage};
use crate::encoding::{OaepHash, PublicKeyMaterial};
use crate::hsm::crypt::oaep;
use crate::hsm::objects;
use crate::hsm::{HsmError, SignMechanism};

/// Step 3: checks the unwrapped session object against the key's spec and reads what
/// the caller compares.
pub(super) fn inspect(
    scratch: &mut Scratch<'_>,
    t: &Target<'_>,
    h: ObjectHandle,
) -> Result<Inspected, ImportRefused> {
    let public = |public: PublicKeyMaterial| Inspected {
        public: Some(public),
        check_block: None,
    };
    match t.spec {
        KeySpec::Aes256 | KeySpec::Aes128 => inspect_aes(scratch, t, h),
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            inspect_rsa(scratch.session, t, h).map(public)
        }
        KeySpec::EcP256 | KeySpec::EcP384 => inspect_ec(scratch.session, t, h).map(public),
        KeySpec::Ed25519 => inspect_ed25519(scratch.session, t, h).map(public),
        KeySpec::Sm2 => Err(HsmError::Unsupported("SM2 import".into()).into()),
    }
}

/// The refusal of material that is not what key `t` is.
fn mismatch(t: &Target<'_>, found: String) -> ImportRefused {
    ImportRefused::Spec(format!(
        "the key material is {found}; key {} is {}",
        t.id, t.spec
    ))
}

/// An AES key of the spec's length; its check block (AES-ECB of a zero block).
fn inspect_aes(
    scratch: &mut Scratch<'_>,
    t: &Target<'_>,
    h: ObjectHandle,
) -> Result<Inspected, ImportRefused> {
    let want = if t.spec == KeySpec::Aes256 { 32 } else { 16 };
    let len = aes_key_len(scratch, h)?;
    if len != want {
        return Err(mismatch(t, format!("a {len}-byte key")));
    }
    let ct = scratch
        .session
        .encrypt(&Mechanism::AesEcb, h, &[0u8; 16])
        .map_err(|e| match e {
            CkError::Pkcs11(
                RvError::KeySizeRange
                | RvError::KeyTypeInconsistent
                | RvError::MechanismInvalid
                | RvError::FunctionFailed
                | RvError::GeneralError,
                _,
            ) => mismatch(t, format!("not a valid AES key ({len} bytes)")),
            other => ck("C_Encrypt (AES-ECB check value)")(other),
        })?;
    let block = <[u8; 16]>::try_from(ct.as_slice())
        .map_err(|_| HsmError::BadInput("AES-ECB check value length".into()))?;
    Ok(Inspected {
        public: None,
        check_block: Some(block),
    })
}

/// An RSA key of the spec's size with a sane exponent, whose halves work together.
fn inspect_rsa(
    s: &Session,
    t: &Target<'_>,
    h: ObjectHandle,
) -> Result<PublicKeyMaterial, ImportRefused> {
    let public = objects::public_key(s, t.spec, h)
        .map_err(ck("C_GetAttributeValue (modulus)"))?
        .ok_or(HsmError::ObjectMissing)?;
    if let PublicKeyMaterial::Rsa { modulus, exponent } = &public {
        let bits = rsa::BigUint::from_bytes_be(modulus).bits();
        if Some(bits as u32) != t.spec.rsa_bits() {
            return Err(mismatch(t, format!("an RSA-{bits} key")));
        }
        let e = rsa::BigUint::from_bytes_be(exponent);
        if e < rsa::BigUint::from(3u8) || exponent.last().is_none_or(|b| b % 2 == 0) {
            return Err(mismatch(
                t,
                format!(
                    "an RSA key with public exponent {e} (an odd exponent of at least 3 is needed)"
                ),
            ));
        }
    }
    rsa_pair_works(s, t, h, &public)?;
    check_given(t, &public)?;
    Ok(public)
}

/// An EC key on the spec's curve; its public point, recovered in the token.
fn inspect_ec(
    s: &Session,
    t: &Target<'_>,
    h: ObjectHandle,
) -> Result<PublicKeyMaterial, ImportRefused> {
    let params = ec_params(s, h)?;
    if Some(params.as_slice()) != objects::ec_params(t.spec) {
        let found = if Some(params.as_slice()) == objects::ec_params(KeySpec::EcP256) {
            "an EC P-256 key".to_string()
        } else if Some(params.as_slice()) == objects::ec_params(KeySpec::EcP384) {
            "an EC P-384 key".to_string()
        } else {
            format!(
                "an EC key on another curve (params {})",
                hex::encode(&params)
            )
        };
        return Err(mismatch(t, found));
    }
    let public = recover_ec(s, t.spec, h)?;
    check_given(t, &public)?;
    Ok(public)
}

/// An Ed25519 key: the caller's public key must verify a challenge signed in the token
/// (the token cannot derive the public half of an imported Ed25519 key).
fn inspect_ed25519(
    s: &Session,
    t: &Target<'_>,
    h: ObjectHandle,
) -> Result<PublicKeyMaterial, ImportRefused> {
    let Some(given) = t.public_key else {
        return Err(ImportRefused::PublicKey(
            "ED25519 keys need public_key_der with the material: the token cannot derive the public half of an imported Ed25519 key".into(),
        ));
    };
    let PublicKeyMaterial::Ed25519 { key } = given else {
        return Err(ImportRefused::PublicKey(
            "public_key_der is not an Ed25519 public key".into(),
        ));
    };
    let challenge = s
        .generate_random_vec(32)
        .map_err(ck("C_GenerateRandom (Ed25519 challenge)"))?;
    let sig = s
        .sign(&SignMechanism::Ed25519.mechanism(), h, &challenge)
        .map_err(ck("C_Sign (Ed25519 challenge)"))?;
    if !crate::encoding::public::ed25519_verifies(key, &challenge, &sig) {
        return Err(ImportRefused::PublicKey(
            "public_key_der does not match the imported Ed25519 private key (a challenge signed in the token does not verify with it)".into(),
        ));
    }
    Ok(given.clone())
}

/// The RSA public values read from the imported private object must belong to its
/// private exponent: a signature made in the token verifies on the host (SIGN_VERIFY), or
/// an OAEP ciphertext made on the host decrypts in the token (ENCRYPT_DECRYPT). Material
/// whose halves do not match would pass the "same public key" check and then fail every
/// call.
fn rsa_pair_works(
    s: &Session,
    t: &Target<'_>,
    h: ObjectHandle,
    public: &PublicKeyMaterial,
) -> Result<(), ImportRefused> {
    let PublicKeyMaterial::Rsa { modulus, exponent } = public else {
        return Ok(());
    };
    let key = crate::encoding::public::rsa_public(modulus, exponent).map_err(|e| {
        ImportRefused::Spec(format!("the RSA public values are not a valid key: {e}"))
    })?;
    let challenge = s
        .generate_random_vec(32)
        .map_err(ck("C_GenerateRandom (RSA pair check)"))?;
    let works = match t.usage {
        KeyUsage::SignVerify => {
            let sig = s
                .sign(&Mechanism::Sha256RsaPkcs, h, &challenge)
                .map_err(ck("C_Sign (RSA pair check)"))?;
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&challenge);
            key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &sig)
                .is_ok()
        }
        KeyUsage::EncryptDecrypt => {
            let ct = key
                .encrypt(
                    &mut rsa::rand_core::OsRng,
                    rsa::Oaep::new::<sha1::Sha1>(),
                    &challenge,
                )
                .map_err(|e| HsmError::BadInput(format!("OAEP for the pair check: {e}")))?;
            s.decrypt(&oaep(OaepHash::Sha1), h, &ct)
                .is_ok_and(|pt| pt == challenge)
        }
    };
    if works {
        Ok(())
    } else {
        Err(ImportRefused::Spec(
            "the RSA private key does not match its own public values (a check in the token failed)".into(),
        ))
    }
}

/// A public key given with the material must be the one the token derived.
fn check_given(t: &Target<'_>, derived: &PublicKeyMaterial) -> Result<(), ImportRefused> {
    let spki = crate::encoding::public::spki_der;
    match t.public_key {
        Some(given) if spki(given).ok() != spki(derived).ok() => Err(ImportRefused::PublicKey(
            "public_key_der does not match the imported private key".into(),
        )),
        _ => Ok(()),
    }
}

/// The public point of an EC private key, recovered from two ECDSA signatures made in
/// the token over random digests (the private object has no CKA_EC_POINT).
fn recover_ec(
    s: &Session,
    spec: KeySpec,
    h: ObjectHandle,
) -> Result<PublicKeyMaterial, ImportRefused> {
    let len: u32 = if spec == KeySpec::EcP256 { 32 } else { 48 };
    let mut signed = Vec::with_capacity(2);
    for _ in 0..2 {
        let digest = s
            .generate_random_vec(len)
            .map_err(ck("C_GenerateRandom (ECDSA recovery)"))?;
        let sig = s
            .sign(&Mechanism::Ecdsa, h, &digest)
            .map_err(ck("C_Sign (ECDSA, public key recovery)"))?;
        signed.push((digest, sig));
    }
    let point = crate::encoding::public::recover_ec_point(spec, &signed).ok_or_else(|| {
        HsmError::BadInput("the public key of the imported EC key could not be recovered".into())
    })?;
    Ok(PublicKeyMaterial::Ec { spec, point })
}

/// The length of an unwrapped AES key. SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped
/// keys (and refuses it in the unwrap template), so where it is 0 the key is wrapped in
/// the token under a throw-away session key with AES key wrap with padding, whose output
/// is the key's length rounded up to 8, plus 8: 24, 32 or 40 bytes for the AES sizes (an
/// odd length is then refused by the AES-ECB check). The session copy is extractable for
/// this alone; the token object is not.
fn aes_key_len(scratch: &mut Scratch<'_>, h: ObjectHandle) -> Result<u64, ImportRefused> {
    let s = scratch.session;
    let len = value_len(s, h)?;
    if len != 0 {
        return Ok(len);
    }
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(false),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
            ],
        )
        .map_err(ck("C_GenerateKey (length probe)"))?;
    let kek = scratch.keep(kek);
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, h);
    scratch.destroy(kek);
    let wrapped = wrapped.map_err(ck("C_WrapKey (length probe)"))?;
    Ok((wrapped.len() as u64).saturating_sub(8))
}

fn value_len(s: &Session, h: ObjectHandle) -> Result<u64, ImportRefused> {
    objects::read_attribute(s, h, AttributeType::ValueLen, |a| match a {
        Attribute::ValueLen(n) => Some(n.into()),
        _ => None,
    })
    .map_err(ck("C_GetAttributeValue (CKA_VALUE_LEN)"))?
    .ok_or_else(|| HsmError::ObjectMissing.into())
}

/// The curve of an EC key object (DER OID).
fn ec_params(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, ImportRefused> {
    objects::read_attribute(s, h, AttributeType::EcParams, |a| match a {
        Attribute::EcParams(p) => Some(p),
        _ => None,
    })
    .map_err(ck("C_GetAttributeValue (CKA_EC_PARAMS)"))?
    .ok_or_else(|| HsmError::ObjectMissing.into())
}
