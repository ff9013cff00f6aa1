//! What hsmd refuses on a token, and why: each key spec, signing algorithm and
//! encryption feature hsmd has, with the first mechanism it needs that the token's
//! mechanism list lacks. Key size caps and failed trials are added by `probe`.

use cryptoki::mechanism::MechanismType;

use crate::domain::spec::{EncryptionAlgorithm, KeySpec, SigningAlgorithm};

/// A feature hsmd offers on some tokens and refuses on this one, with the mechanism it
/// lacks: CreateKey, Sign, Encrypt, GenerateDataKey and import answer FAILED_PRECONDITION
/// MECHANISM_NOT_SUPPORTED with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// A key spec, signing or encryption algorithm, or import wrapping algorithm name.
    pub(crate) feature: String,
    /// The PKCS#11 mechanism the feature needs, e.g. "CKM_AES_GCM".
    pub(crate) mechanism: &'static str,
    /// Why the token cannot do it, e.g. "not in the token's mechanism list".
    pub(crate) why: String,
}

pub(super) const NOT_LISTED: &str = "not in the token's mechanism list";

/// What the mechanism list alone refuses: each spec and algorithm hsmd knows, with the
/// first mechanism it needs that the token does not list.
pub(super) fn refusals(
    have: &[MechanismType],
    specs: &[KeySpec],
    algorithms: &[SigningAlgorithm],
) -> Vec<Refusal> {
    use MechanismType as M;
    let first_missing = |needs: &[(MechanismType, &'static str)]| {
        needs
            .iter()
            .find(|(m, _)| !have.contains(m))
            .map(|(_, n)| *n)
    };
    let rsa: &[(MechanismType, &'static str)] = &[
        (M::RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN"),
        (M::RSA_PKCS, "CKM_RSA_PKCS"),
    ];
    let ec: &[(MechanismType, &'static str)] = &[
        (M::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
        (M::ECDSA, "CKM_ECDSA"),
    ];
    let ed: &[(MechanismType, &'static str)] = &[
        (M::ECC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN"),
        (M::EDDSA, "CKM_EDDSA"),
    ];
    let aes: &[(MechanismType, &'static str)] = &[
        (M::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
        (M::AES_GCM, "CKM_AES_GCM"),
    ];
    let mut out = Vec::new();
    let mut refuse = |feature: &str, mechanism: Option<&'static str>| {
        if let Some(mechanism) = mechanism {
            out.push(Refusal {
                feature: feature.to_string(),
                mechanism,
                why: NOT_LISTED.into(),
            });
        }
    };
    for (spec, needs) in [
        (KeySpec::Rsa2048, rsa),
        (KeySpec::Rsa3072, rsa),
        (KeySpec::Rsa4096, rsa),
        (KeySpec::EcP256, ec),
        (KeySpec::EcP384, ec),
        (KeySpec::Ed25519, ed),
        (KeySpec::Aes256, aes),
    ] {
        if !specs.contains(&spec) {
            refuse(spec.name(), first_missing(needs));
        }
    }
    use SigningAlgorithm::*;
    let pss = (M::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS");
    let pkcs = (M::RSA_PKCS, "CKM_RSA_PKCS");
    for (alg, needs) in [
        (
            RsaPkcs1Sha256,
            [(M::SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS"), pkcs],
        ),
        (
            RsaPkcs1Sha384,
            [(M::SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS"), pkcs],
        ),
        (
            RsaPkcs1Sha512,
            [(M::SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS"), pkcs],
        ),
        (
            RsaPssSha256,
            [(M::SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS"), pss],
        ),
        (
            RsaPssSha384,
            [(M::SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS"), pss],
        ),
        (
            RsaPssSha512,
            [(M::SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS"), pss],
        ),
        (Ed25519, [ed[0], ed[1]]),
    ] {
        if !algorithms.contains(&alg) {
            refuse(alg.name(), first_missing(&needs));
        }
    }
    // Encrypt and GenerateDataKey (blobs are AES-256-GCM in the token).
    refuse(
        EncryptionAlgorithm::SymmetricDefault.name(),
        first_missing(&aes[1..]),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::probe::Capabilities;

    /// tpm2-pkcs11 1.9 on swtpm, as `pkcs11-tool -M` lists it (RSA 1024..3072 bits).
    #[test]
    fn tpm_token_refusals_name_the_mechanism() {
        use MechanismType as M;
        let caps = Capabilities::from_mechanisms(&[
            M::RSA_PKCS_KEY_PAIR_GEN,
            M::RSA_X_509,
            M::RSA_PKCS,
            M::RSA_PKCS_PSS,
            M::RSA_PKCS_OAEP,
            M::SHA256_RSA_PKCS,
            M::SHA384_RSA_PKCS,
            M::SHA512_RSA_PKCS,
            M::SHA256_RSA_PKCS_PSS,
            M::SHA384_RSA_PKCS_PSS,
            M::SHA512_RSA_PKCS_PSS,
            M::ECC_KEY_PAIR_GEN,
            M::ECDSA,
            M::ECDSA_SHA256,
            M::AES_KEY_GEN,
            M::AES_CBC,
            M::AES_ECB,
        ])
        .with_rsa_key_sizes(1024, 3072);
        assert_eq!(
            caps.key_specs,
            [
                KeySpec::Rsa2048,
                KeySpec::Rsa3072,
                KeySpec::EcP256,
                KeySpec::EcP384
            ]
        );
        let r = caps.refusal("RSA_4096").expect("RSA_4096 refused");
        assert_eq!(r.mechanism, "CKM_RSA_PKCS_KEY_PAIR_GEN");
        assert!(r.why.contains("1024..3072"), "{}", r.why);
        assert_eq!(
            caps.refusal("ED25519").unwrap().mechanism,
            "CKM_EC_EDWARDS_KEY_PAIR_GEN"
        );
        assert_eq!(caps.refusal("AES_256").unwrap().mechanism, "CKM_AES_GCM");
        assert_eq!(
            caps.refusal("SYMMETRIC_DEFAULT").unwrap().mechanism,
            "CKM_AES_GCM"
        );
        assert!(caps.refusal("RSA_2048").is_none());
        assert!(caps.refusal("ECDSA_SHA_256").is_none());
        assert!(caps.offers_algorithm(SigningAlgorithm::RsaPssSha256));
        // The token hashes ECDSA_SHA_256 RAW messages itself; SHA-384 stays with hsmd.
        assert_eq!(caps.ecdsa_hashes, [crate::domain::spec::HashAlg::Sha256]);
    }
}
