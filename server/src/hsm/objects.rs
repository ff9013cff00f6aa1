//! Key objects in the token: the attribute templates hsmd creates them with, finding
//! them by CKA_ID, and reading public halves.
//!
//! Every private and secret object is CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE true and
//! CKA_EXTRACTABLE false, and carries only the capabilities of its usage (a signing key
//! has CKA_SIGN true and CKA_DECRYPT/CKA_UNWRAP/CKA_DERIVE false, and so on).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::domain::spec::{KeySpec, KeyUsage};
use crate::encoding::PublicKeyMaterial;

/// DER OID of secp256r1 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID of secp384r1 (1.3.132.0.34).
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER OID of Ed25519 (1.3.101.112).
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Handles of a key's objects, cached per key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyObjects {
    /// Private key (or secret key for symmetric specs).
    pub private: ObjectHandle,
    /// Public key object, for key pairs.
    pub public: Option<ObjectHandle>,
}

/// What the token is asked to generate.
pub struct Generation {
    pub mechanism: Mechanism<'static>,
    pub public: Option<Vec<Attribute>>,
    pub private: Vec<Attribute>,
}

impl Generation {
    /// Leaves out CKA_SIGN, CKA_DECRYPT, CKA_VERIFY and CKA_ENCRYPT where they are false,
    /// for a token that forces them true and refuses a template saying otherwise
    /// (`Capabilities::usage_forced_by_token`); hsmd still enforces the key's usage.
    pub fn drop_false_usage(&mut self) {
        drop_false_usage(&mut self.private);
        if let Some(p) = &mut self.public {
            drop_false_usage(p);
        }
    }
}

/// See [`Generation::drop_false_usage`].
pub(crate) fn drop_false_usage(template: &mut Vec<Attribute>) {
    template.retain(|a| {
        !matches!(
            a,
            Attribute::Sign(false)
                | Attribute::Decrypt(false)
                | Attribute::Verify(false)
                | Attribute::Encrypt(false)
        )
    });
}

/// Templates for a new key of `spec` and `usage` with CKA_ID `id` and CKA_LABEL `label`.
pub fn generation(spec: KeySpec, usage: KeyUsage, id: &[u8], label: &str) -> Option<Generation> {
    let sign = usage == KeyUsage::SignVerify;
    let crypt = usage == KeyUsage::EncryptDecrypt;
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(sign),
        Attribute::Decrypt(crypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]);
    let mut public = common(false);
    public.extend([Attribute::Verify(sign), Attribute::Wrap(false)]);
    let mechanism = match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let bits = spec.rsa_bits()? as u64;
            public.extend([
                Attribute::ModulusBits(bits.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Encrypt(crypt),
            ]);
            Mechanism::RsaPkcsKeyPairGen
        }
        KeySpec::EcP256 | KeySpec::EcP384 => {
            let oid = if spec == KeySpec::EcP256 {
                OID_P256
            } else {
                OID_P384
            };
            public.push(Attribute::EcParams(oid.to_vec()));
            Mechanism::EccKeyPairGen
        }
        KeySpec::Ed25519 => {
            public.push(Attribute::EcParams(OID_ED25519.to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
        KeySpec::Aes256 | KeySpec::Aes128 => {
            let len: u64 = if spec == KeySpec::Aes256 { 32 } else { 16 };
            private.retain(|a| !matches!(a, Attribute::Sign(_)));
            private.extend([
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(len.into()),
                Attribute::Encrypt(crypt),
                Attribute::Wrap(false),
                Attribute::Verify(false),
                Attribute::Sign(false),
            ]);
            return Some(Generation {
                mechanism: Mechanism::AesKeyGen,
                public: None,
                private,
            });
        }
        KeySpec::Sm2 => return None,
    };
    Some(Generation {
        mechanism,
        public: Some(public),
        private,
    })
}

/// CKA_EC_PARAMS of an elliptic-curve spec.
pub(crate) fn ec_params(spec: KeySpec) -> Option<&'static [u8]> {
    match spec {
        KeySpec::EcP256 => Some(OID_P256),
        KeySpec::EcP384 => Some(OID_P384),
        KeySpec::Ed25519 => Some(OID_ED25519),
        _ => None,
    }
}

/// CKA_KEY_TYPE of a spec.
pub(crate) fn key_type(spec: KeySpec) -> Option<KeyType> {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => Some(KeyType::RSA),
        KeySpec::EcP256 | KeySpec::EcP384 => Some(KeyType::EC),
        KeySpec::Ed25519 => Some(KeyType::EC_EDWARDS),
        KeySpec::Aes256 | KeySpec::Aes128 => Some(KeyType::AES),
        KeySpec::Sm2 => None,
    }
}

/// Template of imported material while it is checked: the private (or secret) object
/// of `generation` with its class and key type, as a session object (CKA_TOKEN false),
/// without CKA_VALUE_LEN (the material sets it; SoftHSM2 refuses it). A secret key's
/// session copy is extractable so that its length can be learnt in the token (see
/// `import::aes_key_len`); the token object made from it is not.
pub(crate) fn import_template(
    spec: KeySpec,
    usage: KeyUsage,
    id: &[u8],
    label: &str,
) -> Option<Vec<Attribute>> {
    let mut t = generation(spec, usage, id, label)?.private;
    t.retain(|a| {
        !matches!(
            a,
            Attribute::Token(_)
                | Attribute::Class(_)
                | Attribute::KeyType(_)
                | Attribute::ValueLen(_)
                | Attribute::Extractable(_)
        )
    });
    t.push(Attribute::Extractable(!spec.is_asymmetric()));
    let class = if spec.is_asymmetric() {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::SECRET_KEY
    };
    t.extend([
        Attribute::Token(false),
        Attribute::Class(class),
        Attribute::KeyType(key_type(spec)?),
    ]);
    Some(t)
}

/// Template of the token public key object of imported key-pair material: the public
/// template of `generation` with the key's public values.
pub(crate) fn public_object(
    spec: KeySpec,
    usage: KeyUsage,
    id: &[u8],
    label: &str,
    material: &PublicKeyMaterial,
) -> Option<Vec<Attribute>> {
    let mut t = generation(spec, usage, id, label)?.public?;
    t.retain(|a| !matches!(a, Attribute::ModulusBits(_) | Attribute::PublicExponent(_)));
    t.extend([
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type(spec)?),
    ]);
    match material {
        PublicKeyMaterial::Rsa { modulus, exponent } => t.extend([
            Attribute::Modulus(modulus.clone()),
            Attribute::PublicExponent(exponent.clone()),
        ]),
        PublicKeyMaterial::Ec { point, .. } => t.push(Attribute::EcPoint(octet_string(point))),
        PublicKeyMaterial::Ed25519 { key } => t.push(Attribute::EcPoint(octet_string(key))),
    }
    Some(t)
}

/// DER OCTET STRING of `bytes` (at most 65535 bytes), as CKA_EC_POINT is stored.
fn octet_string(bytes: &[u8]) -> Vec<u8> {
    let len = bytes.len();
    let mut v = vec![0x04];
    if len < 0x80 {
        v.push(len as u8);
    } else if len < 0x100 {
        v.extend([0x81, len as u8]);
    } else {
        v.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    v.extend_from_slice(bytes);
    v
}

/// Generates a key in the token; destroys what was made if any step fails.
pub fn generate(session: &Session, template: &Generation) -> cryptoki::error::Result<KeyObjects> {
    match &template.public {
        Some(public) => {
            let (pubh, privh) =
                session.generate_key_pair(&template.mechanism, public, &template.private)?;
            Ok(KeyObjects {
                private: privh,
                public: Some(pubh),
            })
        }
        None => {
            let h = session.generate_key(&template.mechanism, &template.private)?;
            Ok(KeyObjects {
                private: h,
                public: None,
            })
        }
    }
}

/// Finds a key's token objects (not session copies) by CKA_ID; `None` when the token has
/// no private/secret object for it.
pub(crate) fn find_token_objects(
    session: &Session,
    id: &[u8],
) -> cryptoki::error::Result<Option<KeyObjects>> {
    let private = find_one(session, id, ObjectClass::PRIVATE_KEY)?.or(find_one(
        session,
        id,
        ObjectClass::SECRET_KEY,
    )?);
    let Some(private) = private else {
        return Ok(None);
    };
    let public = find_one(session, id, ObjectClass::PUBLIC_KEY)?;
    Ok(Some(KeyObjects { private, public }))
}

fn find_one(
    session: &Session,
    id: &[u8],
    class: ObjectClass,
) -> cryptoki::error::Result<Option<ObjectHandle>> {
    let template = [
        Attribute::Token(true),
        Attribute::Class(class),
        Attribute::Id(id.to_vec()),
    ];
    Ok(session.find_objects(&template)?.into_iter().next())
}

/// CKA_ID prefix of import wrapping keys (followed by the import token's 16 bytes), so
/// that reconciliation tells them from key material.
pub(crate) const WRAPPING_KEY_ID_PREFIX: &[u8] = b"hsmd-wrap:";

/// Every (class, CKA_ID) of key objects in the token, for reconciliation (import
/// wrapping keys are left out).
pub(crate) fn list_ids(session: &Session) -> cryptoki::error::Result<Vec<(ObjectClass, Vec<u8>)>> {
    let mut ids = token_ids(session, &KEY_CLASSES)?;
    ids.retain(|(_, id)| !id.starts_with(WRAPPING_KEY_ID_PREFIX));
    Ok(ids)
}

/// Every (class, CKA_ID) of the token objects of `classes`.
pub(crate) fn token_ids(
    session: &Session,
    classes: &[ObjectClass],
) -> cryptoki::error::Result<Vec<(ObjectClass, Vec<u8>)>> {
    let mut out = Vec::new();
    for class in classes {
        for h in session.find_objects(&[Attribute::Token(true), Attribute::Class(*class)])? {
            for attr in session.get_attributes(h, &[AttributeType::Id])? {
                if let Attribute::Id(id) = attr {
                    out.push((*class, id));
                }
            }
        }
    }
    Ok(out)
}

/// Reads the public half of a key pair from its public object.
pub(crate) fn public_key(
    session: &Session,
    spec: KeySpec,
    handle: ObjectHandle,
) -> cryptoki::error::Result<Option<PublicKeyMaterial>> {
    let material = match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let attrs = session.get_attributes(
                handle,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )?;
            let (mut modulus, mut exponent) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => modulus = Some(m),
                    Attribute::PublicExponent(e) => exponent = Some(e),
                    _ => {}
                }
            }
            match (modulus, exponent) {
                (Some(modulus), Some(exponent)) => PublicKeyMaterial::Rsa { modulus, exponent },
                _ => return Ok(None),
            }
        }
        KeySpec::EcP256 | KeySpec::EcP384 | KeySpec::Ed25519 => {
            let Some(point) = ec_point(session, handle)? else {
                return Ok(None);
            };
            if spec == KeySpec::Ed25519 {
                match <[u8; 32]>::try_from(point.as_slice()) {
                    Ok(key) => PublicKeyMaterial::Ed25519 { key },
                    Err(_) => return Ok(None),
                }
            } else {
                PublicKeyMaterial::Ec { spec, point }
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(material))
}

/// CKA_EC_POINT, unwrapped from its DER OCTET STRING when the token wraps it.
fn ec_point(session: &Session, h: ObjectHandle) -> cryptoki::error::Result<Option<Vec<u8>>> {
    read_attribute(session, h, AttributeType::EcPoint, |a| match a {
        Attribute::EcPoint(p) => Some(unwrap_octet_string(&p).unwrap_or(p)),
        _ => None,
    })
}

/// One attribute of an object, as `pick` takes it out of the token's answer (`None` if
/// the token gave none).
pub(crate) fn read_attribute<T>(
    session: &Session,
    h: ObjectHandle,
    ty: AttributeType,
    pick: impl Fn(Attribute) -> Option<T>,
) -> cryptoki::error::Result<Option<T>> {
    Ok(session.get_attributes(h, &[ty])?.into_iter().find_map(pick))
}

/// The classes of a key's objects (its certificate aside).
pub(crate) const KEY_CLASSES: [ObjectClass; 3] = [
    ObjectClass::PRIVATE_KEY,
    ObjectClass::SECRET_KEY,
    ObjectClass::PUBLIC_KEY,
];

/// Destroys every object of `classes` with CKA_ID `id` that also matches `also` (e.g.
/// CKA_TOKEN true); returns how many there were.
pub(crate) fn destroy_with_id(
    session: &Session,
    id: &[u8],
    classes: &[ObjectClass],
    also: &[Attribute],
) -> cryptoki::error::Result<usize> {
    let mut destroyed = 0;
    for class in classes {
        let mut template = vec![Attribute::Class(*class), Attribute::Id(id.to_vec())];
        template.extend_from_slice(also);
        for h in session.find_objects(&template)? {
            session.destroy_object(h)?;
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// Strips a DER OCTET STRING header if `der` is exactly one OCTET STRING.
fn unwrap_octet_string(der: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (body.len() == len).then(|| body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_string_unwrapping() {
        assert_eq!(
            unwrap_octet_string(&[0x04, 0x02, 0xaa, 0xbb]),
            Some(vec![0xaa, 0xbb])
        );
        assert_eq!(unwrap_octet_string(&[0x04, 0x03, 0xaa, 0xbb]), None);
        let long: Vec<u8> = [vec![0x04, 0x81, 0x85], vec![1u8; 0x85]].concat();
        assert_eq!(octet_string(&[1u8; 0x85]), long);
        assert_eq!(
            unwrap_octet_string(&octet_string(&[7u8; 65])),
            Some(vec![7u8; 65])
        );
        assert_eq!(unwrap_octet_string(&long).map(|v| v.len()), Some(0x85));
        // A raw uncompressed point starts with 0x04 too but is not a valid OCTET STRING.
        let raw = [vec![0x04], vec![9u8; 64]].concat();
        assert_eq!(unwrap_octet_string(&raw), None);
    }

    #[test]
    fn signing_key_template_forbids_decrypt_and_export() {
        let g = generation(KeySpec::Rsa2048, KeyUsage::SignVerify, &[1; 16], "k").unwrap();
        for must in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
        ] {
            assert!(g.private.contains(&must), "missing {must:?}");
        }
        assert!(generation(KeySpec::Sm2, KeyUsage::SignVerify, &[1; 16], "k").is_none());
    }

    #[test]
    fn dropping_false_usage_keeps_the_true_flags_and_the_rest() {
        let mut g = generation(KeySpec::Rsa2048, KeyUsage::SignVerify, &[1; 16], "k").unwrap();
        g.drop_false_usage();
        let public = g.public.as_ref().unwrap();
        assert!(g.private.contains(&Attribute::Sign(true)));
        assert!(public.contains(&Attribute::Verify(true)));
        for a in g.private.iter().chain(public) {
            assert!(
                !matches!(
                    a,
                    Attribute::Decrypt(false) | Attribute::Encrypt(false) | Attribute::Sign(false)
                ),
                "{a:?} left in"
            );
        }
        assert!(g.private.contains(&Attribute::Extractable(false)));
        assert!(g.private.contains(&Attribute::Unwrap(false)));
    }
}
