//! Crypto encodings shared by the backend and the key rules: the public half of a key as
//! the token stores it ([`PublicKeyMaterial`]), its SubjectPublicKeyInfo and signature
//! encodings (`public`), OAEP parameters and the constant-time OAEP decode (`oaep`). Pure
//! functions over bytes: this module names only `domain`.

pub(crate) mod oaep;
pub(crate) mod public;

use crate::domain::spec::KeySpec;

/// The public half of a key as the token stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKeyMaterial {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// SEC1 uncompressed point.
    Ec {
        spec: KeySpec,
        point: Vec<u8>,
    },
    Ed25519 {
        key: [u8; 32],
    },
}

/// Hash (and MGF1 hash) of an RSA-OAEP operation; the label is always empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
}
