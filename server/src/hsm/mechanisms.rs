//! Signing operations and the PKCS#11 mechanisms that carry them out on this token.
//!
//! ECDSA over a RAW message uses CKM_ECDSA_SHA256/384 where the token lists them (the
//! token hashes, as it does for RSA); SoftHSM2 has neither, so there hsmd hashes and
//! the token signs the digest with CKM_ECDSA. A DIGEST request for RSA uses the bare CKM_RSA_PKCS / CKM_RSA_PKCS_PSS mechanisms,
//! with the DigestInfo prefix added here for PKCS#1 v1.5.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::domain::spec::HashAlg;

/// One signing operation as the token performs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMechanism {
    /// RSASSA-PKCS1-v1_5; the token hashes the message.
    RsaPkcs1(HashAlg),
    /// RSASSA-PKCS1-v1_5 over a caller-supplied digest.
    RsaPkcs1Digest(HashAlg),
    /// RSASSA-PSS (salt = hash length); the token hashes the message.
    RsaPss(HashAlg),
    /// RSASSA-PSS over a caller-supplied digest.
    RsaPssDigest(HashAlg),
    /// ECDSA over a digest; output is raw r‖s.
    EcdsaDigest,
    /// ECDSA; the token hashes the message (CKM_ECDSA_SHA256/384). Output is raw r‖s.
    Ecdsa(HashAlg),
    /// Pure Ed25519 over the message.
    Ed25519,
}

impl SignMechanism {
    /// The cryptoki mechanism (with parameters) for this operation.
    pub fn mechanism(self) -> Mechanism<'static> {
        match self {
            SignMechanism::RsaPkcs1(h) => match h {
                HashAlg::Sha256 => Mechanism::Sha256RsaPkcs,
                HashAlg::Sha384 => Mechanism::Sha384RsaPkcs,
                HashAlg::Sha512 => Mechanism::Sha512RsaPkcs,
            },
            SignMechanism::RsaPkcs1Digest(_) => Mechanism::RsaPkcs,
            SignMechanism::RsaPss(h) => match h {
                HashAlg::Sha256 => Mechanism::Sha256RsaPkcsPss(pss_params(h)),
                HashAlg::Sha384 => Mechanism::Sha384RsaPkcsPss(pss_params(h)),
                HashAlg::Sha512 => Mechanism::Sha512RsaPkcsPss(pss_params(h)),
            },
            SignMechanism::RsaPssDigest(h) => Mechanism::RsaPkcsPss(pss_params(h)),
            SignMechanism::EcdsaDigest => Mechanism::Ecdsa,
            SignMechanism::Ecdsa(h) => match h {
                HashAlg::Sha256 => Mechanism::EcdsaSha256,
                HashAlg::Sha384 => Mechanism::EcdsaSha384,
                HashAlg::Sha512 => Mechanism::EcdsaSha512,
            },
            SignMechanism::Ed25519 => {
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
            }
        }
    }

    /// The PKCS#11 name of the mechanism (for metrics and logs).
    pub fn name(self) -> &'static str {
        match self {
            SignMechanism::RsaPkcs1(HashAlg::Sha256) => "CKM_SHA256_RSA_PKCS",
            SignMechanism::RsaPkcs1(HashAlg::Sha384) => "CKM_SHA384_RSA_PKCS",
            SignMechanism::RsaPkcs1(HashAlg::Sha512) => "CKM_SHA512_RSA_PKCS",
            SignMechanism::RsaPkcs1Digest(_) => "CKM_RSA_PKCS",
            SignMechanism::RsaPss(HashAlg::Sha256) => "CKM_SHA256_RSA_PKCS_PSS",
            SignMechanism::RsaPss(HashAlg::Sha384) => "CKM_SHA384_RSA_PKCS_PSS",
            SignMechanism::RsaPss(HashAlg::Sha512) => "CKM_SHA512_RSA_PKCS_PSS",
            SignMechanism::RsaPssDigest(_) => "CKM_RSA_PKCS_PSS",
            SignMechanism::EcdsaDigest => "CKM_ECDSA",
            SignMechanism::Ecdsa(HashAlg::Sha256) => "CKM_ECDSA_SHA256",
            SignMechanism::Ecdsa(HashAlg::Sha384) => "CKM_ECDSA_SHA384",
            SignMechanism::Ecdsa(HashAlg::Sha512) => "CKM_ECDSA_SHA512",
            SignMechanism::Ed25519 => "CKM_EDDSA",
        }
    }

    /// The bytes handed to C_Sign / C_Verify for `input` (the message or the digest).
    pub fn token_input(self, input: &[u8]) -> Vec<u8> {
        match self {
            SignMechanism::RsaPkcs1Digest(h) => {
                let mut v = Vec::with_capacity(19 + input.len());
                v.extend_from_slice(digest_info_prefix(h));
                v.extend_from_slice(input);
                v
            }
            _ => input.to_vec(),
        }
    }
}

/// The hashes for which a mechanism list has CKM_ECDSA_SHA*, so the token hashes RAW
/// ECDSA messages itself.
pub fn ecdsa_hashes(listed: &[MechanismType]) -> Vec<HashAlg> {
    [
        (HashAlg::Sha256, MechanismType::ECDSA_SHA256),
        (HashAlg::Sha384, MechanismType::ECDSA_SHA384),
    ]
    .into_iter()
    .filter(|(_, m)| listed.contains(m))
    .map(|(h, _)| h)
    .collect()
}

fn pss_params(h: HashAlg) -> PkcsPssParams {
    let (hash_alg, mgf) = match h {
        HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    };
    PkcsPssParams {
        hash_alg,
        mgf,
        s_len: (h.output_len() as u64).into(),
    }
}

/// DER of DigestInfo up to the digest itself (RFC 8017 section 9.2, note 1).
fn digest_info_prefix(h: HashAlg) -> &'static [u8] {
    match h {
        HashAlg::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        HashAlg::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        HashAlg::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_info_prefix_declares_digest_length() {
        for h in HashAlg::ALL {
            let p = digest_info_prefix(*h);
            assert_eq!(p.len(), 19);
            assert_eq!(p[18] as usize, h.output_len());
            // Outer SEQUENCE length covers the rest of the prefix plus the digest.
            assert_eq!(p[1] as usize, 17 + h.output_len());
        }
    }

    #[test]
    fn pkcs1_digest_input_is_digest_info() {
        let d = [7u8; 32];
        let v = SignMechanism::RsaPkcs1Digest(HashAlg::Sha256).token_input(&d);
        assert_eq!(v.len(), 51);
        assert_eq!(&v[19..], &d);
        assert_eq!(SignMechanism::EcdsaDigest.token_input(&d), d.to_vec());
    }
}
