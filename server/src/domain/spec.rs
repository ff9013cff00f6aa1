//! Key specs, usages, states and signing algorithms: the vocabulary of the key model,
//! with the rules that tie them together (which algorithm a spec allows, which usage).
//! Pure data, no I/O: the api layer converts from/to proto enums, the hsm layer maps
//! them to PKCS#11 mechanisms.

use std::fmt;

/// What a key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
    EcP384,
    Ed25519,
    Aes256,
    Aes128,
    Sm2,
}

/// What a key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    SignVerify,
    EncryptDecrypt,
}

/// Where the key material comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOrigin {
    Hsm,
    External,
}

/// Lifecycle state of a key. Only `Enabled` keys do cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
    Destroyed,
}

/// Hash functions used by the signing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

/// Signing algorithms, named as in the cloud KMS APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
    EcdsaSha256,
    EcdsaSha384,
    Ed25519,
}

/// Encryption algorithms, named as in the cloud KMS APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionAlgorithm {
    /// AES-256-GCM in the token, self-describing blob.
    SymmetricDefault,
    RsaesOaepSha1,
    RsaesOaepSha256,
    /// Named only to be refused: PKCS#1 v1.5 decryption is a padding oracle.
    RsaesPkcs1V15,
}

/// How key material is wrapped for import, named as in the cloud KMS APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrappingAlgorithm {
    /// Raw AES key bytes under RSA-OAEP-SHA-1.
    RsaesOaepSha1,
    RsaesOaepSha256,
    /// An ephemeral AES-256 key under RSA-OAEP-SHA-1, then the material under AES key
    /// wrap with padding (RFC 5649).
    RsaAesKeyWrapSha1,
    RsaAesKeyWrapSha256,
}

impl WrappingAlgorithm {
    /// The OAEP block uses SHA-256 (else SHA-1).
    pub fn sha256(self) -> bool {
        matches!(self, Self::RsaesOaepSha256 | Self::RsaAesKeyWrapSha256)
    }

    /// The material follows an ephemeral AES key, under AES key wrap with padding.
    pub fn key_wrap(self) -> bool {
        matches!(self, Self::RsaAesKeyWrapSha1 | Self::RsaAesKeyWrapSha256)
    }
}

/// How the message of a Sign or Verify call is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Raw,
    Digest,
}

/// Largest RAW message Sign and Verify accept.
pub const MAX_RAW_MESSAGE: usize = 4096;

/// Ties a Rust enum to its stable text name (the proto enum value name), used in the
/// store, the audit log and error messages.
macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            /// The stable name (as in the proto enum).
            pub fn name(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),+ }
            }

            /// Parses a stable name (exact match).
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($name => Some(<$ty>::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

names!(KeySpec {
    Rsa2048 => "RSA_2048", Rsa3072 => "RSA_3072", Rsa4096 => "RSA_4096",
    EcP256 => "EC_P256", EcP384 => "EC_P384", Ed25519 => "ED25519",
    Aes256 => "AES_256", Aes128 => "AES_128", Sm2 => "SM2",
});
names!(KeyUsage { SignVerify => "SIGN_VERIFY", EncryptDecrypt => "ENCRYPT_DECRYPT" });
names!(KeyOrigin { Hsm => "HSM", External => "EXTERNAL" });
names!(KeyState {
    Enabled => "ENABLED", Disabled => "DISABLED", PendingDeletion => "PENDING_DELETION",
    PendingImport => "PENDING_IMPORT", Destroyed => "DESTROYED",
});
names!(HashAlg { Sha256 => "SHA_256", Sha384 => "SHA_384", Sha512 => "SHA_512" });
names!(SigningAlgorithm {
    RsaPkcs1Sha256 => "RSA_PKCS1_SHA_256", RsaPkcs1Sha384 => "RSA_PKCS1_SHA_384",
    RsaPkcs1Sha512 => "RSA_PKCS1_SHA_512", RsaPssSha256 => "RSA_PSS_SHA_256",
    RsaPssSha384 => "RSA_PSS_SHA_384", RsaPssSha512 => "RSA_PSS_SHA_512",
    EcdsaSha256 => "ECDSA_SHA_256", EcdsaSha384 => "ECDSA_SHA_384",
    Ed25519 => "ED25519_SHA_512",
});
names!(MessageType { Raw => "RAW", Digest => "DIGEST" });
names!(WrappingAlgorithm {
    RsaesOaepSha1 => "RSAES_OAEP_SHA_1", RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
    RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1", RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
});
names!(EncryptionAlgorithm {
    SymmetricDefault => "SYMMETRIC_DEFAULT", RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
    RsaesOaepSha256 => "RSAES_OAEP_SHA_256", RsaesPkcs1V15 => "RSAES_PKCS1_V1_5",
});

impl KeySpec {
    /// True for RSA, EC and Ed25519 specs (a key pair in the token).
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, KeySpec::Aes256 | KeySpec::Aes128)
    }

    /// RSA modulus size in bits, for RSA specs.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Usages a key of this spec can have.
    pub fn allowed_usages(self) -> &'static [KeyUsage] {
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 | KeySpec::Sm2 => {
                &[KeyUsage::SignVerify, KeyUsage::EncryptDecrypt]
            }
            KeySpec::EcP256 | KeySpec::EcP384 | KeySpec::Ed25519 => &[KeyUsage::SignVerify],
            KeySpec::Aes256 | KeySpec::Aes128 => &[KeyUsage::EncryptDecrypt],
        }
    }

    /// Signing algorithms a SIGN_VERIFY key of this spec allows. ECDSA is paired with
    /// the hash of matching strength only (P-256 with SHA-256, P-384 with SHA-384), as
    /// in the cloud KMS APIs: ECDSA_SHA_384 on a P-256 key is refused.
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm::*;
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[
                RsaPkcs1Sha256,
                RsaPkcs1Sha384,
                RsaPkcs1Sha512,
                RsaPssSha256,
                RsaPssSha384,
                RsaPssSha512,
            ],
            KeySpec::EcP256 => &[EcdsaSha256],
            KeySpec::EcP384 => &[EcdsaSha384],
            KeySpec::Ed25519 => &[Ed25519],
            KeySpec::Aes256 | KeySpec::Aes128 | KeySpec::Sm2 => &[],
        }
    }

    /// Encryption algorithms an ENCRYPT_DECRYPT key of this spec allows (SHA-256 first:
    /// the one to prefer). AES_128 is a data-key size only, never a key in the token.
    pub fn encryption_algorithms(self) -> &'static [EncryptionAlgorithm] {
        use EncryptionAlgorithm::*;
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                &[RsaesOaepSha256, RsaesOaepSha1]
            }
            KeySpec::Aes256 | KeySpec::Aes128 => &[SymmetricDefault],
            _ => &[],
        }
    }
}

/// Largest plaintext Encrypt takes with an AES key.
pub const MAX_PLAINTEXT: usize = 4096;

impl HashAlg {
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// Hashes `data` in hsmd (used where the token has no combined mechanism).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

impl SigningAlgorithm {
    /// The hash the caller's DIGEST must be made with; `None` for pure Ed25519, which
    /// signs the message itself.
    pub fn hash(self) -> Option<HashAlg> {
        use SigningAlgorithm::*;
        match self {
            RsaPkcs1Sha256 | RsaPssSha256 | EcdsaSha256 => Some(HashAlg::Sha256),
            RsaPkcs1Sha384 | RsaPssSha384 | EcdsaSha384 => Some(HashAlg::Sha384),
            RsaPkcs1Sha512 | RsaPssSha512 => Some(HashAlg::Sha512),
            Ed25519 => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in KeySpec::ALL {
            assert_eq!(KeySpec::from_name(s.name()), Some(*s));
        }
        for a in SigningAlgorithm::ALL {
            assert_eq!(SigningAlgorithm::from_name(a.name()), Some(*a));
        }
        for s in KeyState::ALL {
            assert_eq!(KeyState::from_name(s.name()), Some(*s));
        }
        assert_eq!(KeySpec::from_name("rsa_2048"), None);
    }

    #[test]
    fn ecdsa_hash_strength_matches_curve() {
        assert!(
            KeySpec::EcP256
                .signing_algorithms()
                .contains(&SigningAlgorithm::EcdsaSha256)
        );
        assert!(
            !KeySpec::EcP256
                .signing_algorithms()
                .contains(&SigningAlgorithm::EcdsaSha384)
        );
        assert!(
            !KeySpec::Rsa2048
                .signing_algorithms()
                .contains(&SigningAlgorithm::EcdsaSha256)
        );
        assert_eq!(
            KeySpec::Ed25519.signing_algorithms(),
            &[SigningAlgorithm::Ed25519]
        );
    }

    #[test]
    fn symmetric_specs_cannot_sign() {
        assert!(KeySpec::Aes256.signing_algorithms().is_empty());
        assert_eq!(
            KeySpec::Aes256.allowed_usages(),
            &[KeyUsage::EncryptDecrypt]
        );
        assert_eq!(KeySpec::EcP384.allowed_usages(), &[KeyUsage::SignVerify]);
    }

    #[test]
    fn encryption_algorithms_by_spec() {
        use EncryptionAlgorithm::*;
        assert_eq!(KeySpec::Aes256.encryption_algorithms(), &[SymmetricDefault]);
        assert!(
            KeySpec::Rsa3072
                .encryption_algorithms()
                .contains(&RsaesOaepSha1)
        );
        for s in KeySpec::ALL {
            assert!(!s.encryption_algorithms().contains(&RsaesPkcs1V15));
        }
        assert!(KeySpec::EcP256.encryption_algorithms().is_empty());
        for a in EncryptionAlgorithm::ALL {
            assert_eq!(EncryptionAlgorithm::from_name(a.name()), Some(*a));
        }
    }

    #[test]
    fn digest_lengths() {
        for h in HashAlg::ALL {
            assert_eq!(h.digest(b"abc").len(), h.output_len());
        }
    }
}
