//! Signature AlgorithmIdentifiers for requests and certificates, and the default
//! algorithm of each key spec.
//!
//! RSA PKCS#1 v1.5 identifiers carry NULL parameters (RFC 4055); ECDSA and Ed25519 ones
//! carry none (RFC 5758, RFC 8410). RSA-PSS carries RSASSA-PSS-params: the hash, MGF1
//! with the same hash, a salt as long as the hash, and trailer field 1 (the DER default,
//! so not written) — what the token's CKM_RSA_PKCS_PSS does for hsmd's PSS algorithms.

use der::asn1::{Any, ObjectIdentifier};
use spki::AlgorithmIdentifierOwned;

use super::CertError;
use crate::domain::spec::{KeySpec, SigningAlgorithm};

/// The algorithm used when a request names none.
pub(crate) fn default_algorithm(spec: KeySpec) -> Option<SigningAlgorithm> {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            Some(SigningAlgorithm::RsaPkcs1Sha256)
        }
        KeySpec::EcP256 => Some(SigningAlgorithm::EcdsaSha256),
        KeySpec::EcP384 => Some(SigningAlgorithm::EcdsaSha384),
        KeySpec::Ed25519 => Some(SigningAlgorithm::Ed25519),
        KeySpec::Aes256 | KeySpec::Aes128 | KeySpec::Sm2 => None,
    }
}

/// The AlgorithmIdentifier of signatures made with `alg`.
pub(crate) fn algorithm_identifier(
    alg: SigningAlgorithm,
) -> Result<AlgorithmIdentifierOwned, CertError> {
    use SigningAlgorithm::*;
    let pss = |r: spki::Result<AlgorithmIdentifierOwned>| {
        r.map_err(|e| {
            CertError::Key(crate::keys::KeyError::Internal(format!(
                "RSASSA-PSS parameters: {e}"
            )))
        })
    };
    let with_null = |oid: &str| AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap(oid),
        parameters: Some(Any::null()),
    };
    let bare = |oid: &str| AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap(oid),
        parameters: None,
    };
    Ok(match alg {
        RsaPkcs1Sha256 => with_null("1.2.840.113549.1.1.11"),
        RsaPkcs1Sha384 => with_null("1.2.840.113549.1.1.12"),
        RsaPkcs1Sha512 => with_null("1.2.840.113549.1.1.13"),
        RsaPssSha256 => pss(rsa::pss::get_default_pss_signature_algo_id::<sha2::Sha256>())?,
        RsaPssSha384 => pss(rsa::pss::get_default_pss_signature_algo_id::<sha2::Sha384>())?,
        RsaPssSha512 => pss(rsa::pss::get_default_pss_signature_algo_id::<sha2::Sha512>())?,
        EcdsaSha256 => bare("1.2.840.10045.4.3.2"),
        EcdsaSha384 => bare("1.2.840.10045.4.3.3"),
        Ed25519 => bare("1.3.101.112"),
    })
}

#[cfg(test)]
mod tests {
    use der::Encode;

    use super::*;

    #[test]
    fn pss_parameters_name_hash_mgf1_and_salt() {
        let id = algorithm_identifier(SigningAlgorithm::RsaPssSha384).unwrap();
        assert_eq!(id.oid.to_string(), "1.2.840.113549.1.1.10");
        let der = id.to_der().unwrap();
        let hex = hex::encode(&der);
        let sha384 = "0609608648016503040202"; // OID 2.16.840.1.101.3.4.2.2
        assert_eq!(
            hex.matches(sha384).count(),
            2,
            "hash and MGF1 hash are both SHA-384: {hex}"
        );
        assert!(hex.contains("06092a864886f70d010108"), "MGF1 OID: {hex}");
        assert!(hex.contains("a203020130"), "saltLength [2] = 48: {hex}");
        assert!(
            hex.ends_with("a203020130"),
            "trailerField 1 is the DER default and is omitted: {hex}"
        );
    }

    #[test]
    fn pkcs1_has_null_parameters_and_ecdsa_none() {
        let rsa = algorithm_identifier(SigningAlgorithm::RsaPkcs1Sha256)
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(hex::encode(rsa), "300d06092a864886f70d01010b0500");
        let ec = algorithm_identifier(SigningAlgorithm::EcdsaSha256)
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(hex::encode(ec), "300a06082a8648ce3d040302");
        let ed = algorithm_identifier(SigningAlgorithm::Ed25519)
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(hex::encode(ed), "300506032b6570");
    }

    #[test]
    fn every_signing_spec_has_a_default() {
        for spec in KeySpec::ALL {
            let d = default_algorithm(*spec);
            assert_eq!(d.is_some(), !spec.signing_algorithms().is_empty(), "{spec}");
            if let Some(a) = d {
                assert!(spec.signing_algorithms().contains(&a));
            }
        }
    }
}
