//! Building a PKCS#10 CertificationRequest or a self-signed certificate around a
//! signature made elsewhere (in the token): encode the to-be-signed part, hand its DER to
//! `sign`, and wrap the signature with the matching AlgorithmIdentifier.

use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, UtcTime};
use der::referenced::OwnedToRef;
use der::{Encode, EncodePem, pem::LineEnding};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::{Attribute, Attributes};
use x509_cert::certificate::{Certificate, TbsCertificate, Version as CertVersion};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version as ReqVersion};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::CertError;
use super::san::extension;
use super::sigalg::algorithm_identifier;
use crate::domain::spec::SigningAlgorithm;

/// A signed structure, DER and PEM, with the SHA-256 of the bytes the token signed (for
/// the audit record).
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
    pub(crate) signed_sha256: String,
}

/// What a self-signed certificate says besides the subject and key.
#[derive(Debug, Clone)]
pub(crate) struct CertFields {
    /// Positive serial number, big-endian, at most 20 bytes.
    pub(crate) serial: Vec<u8>,
    /// Unix seconds.
    pub(crate) not_before: u64,
    pub(crate) not_after: u64,
}

/// Builds and signs a CertificationRequest: version 1, the subject, the key's SPKI and,
/// when there are extensions, one extensionRequest attribute holding them.
pub(crate) fn csr(
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
    alg: SigningAlgorithm,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, CertError>,
) -> Result<Signed, CertError> {
    let mut attributes = Attributes::new();
    if !extensions.is_empty() {
        let attr = Attribute::try_from(ExtensionReq(extensions))
            .map_err(|e| CertError::encoding("extensionRequest", e))?;
        attributes
            .insert(attr)
            .map_err(|e| CertError::encoding("attributes", e))?;
    }
    let info = CertReqInfo {
        version: ReqVersion::V1,
        subject,
        public_key: spki,
        attributes,
    };
    let tbs = info
        .to_der()
        .map_err(|e| CertError::encoding("CertificationRequestInfo", e))?;
    let signature = sign(&tbs)?;
    let req = CertReq {
        info,
        algorithm: algorithm_identifier(alg)?,
        signature: BitString::from_bytes(&signature)
            .map_err(|e| CertError::encoding("signature", e))?,
    };
    finish(&req, &tbs, "CertificationRequest")
}

/// Builds and signs a self-signed X.509 v3 certificate: issuer = subject, the given
/// extensions plus subjectKeyIdentifier and authorityKeyIdentifier (both the SHA-1 of
/// the public key, RFC 5280 method 1).
pub(crate) fn self_signed(
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    mut extensions: Vec<Extension>,
    fields: &CertFields,
    alg: SigningAlgorithm,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, CertError>,
) -> Result<Signed, CertError> {
    let ski = SubjectKeyIdentifier::try_from(spki.owned_to_ref())
        .map_err(|e| CertError::encoding("subjectKeyIdentifier", e))?;
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(ski.0.clone()),
        ..Default::default()
    };
    extensions.push(extension(
        "subjectKeyIdentifier",
        der::asn1::ObjectIdentifier::new_unwrap("2.5.29.14"),
        false,
        &ski,
    )?);
    extensions.push(extension(
        "authorityKeyIdentifier",
        der::asn1::ObjectIdentifier::new_unwrap("2.5.29.35"),
        false,
        &aki,
    )?);
    let algorithm = algorithm_identifier(alg)?;
    let tbs = TbsCertificate {
        version: CertVersion::V3,
        serial_number: SerialNumber::new(&fields.serial)
            .map_err(|e| CertError::encoding("serial number", e))?,
        signature: algorithm.clone(),
        issuer: subject.clone(),
        validity: Validity {
            not_before: x509_time(fields.not_before)?,
            not_after: x509_time(fields.not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs
        .to_der()
        .map_err(|e| CertError::encoding("TBSCertificate", e))?;
    let signature = sign(&tbs_der)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature)
            .map_err(|e| CertError::encoding("signature", e))?,
    };
    finish(&cert, &tbs_der, "Certificate")
}

fn finish<T: Encode + EncodePem>(value: &T, tbs: &[u8], what: &str) -> Result<Signed, CertError> {
    Ok(Signed {
        der: value.to_der().map_err(|e| CertError::encoding(what, e))?,
        pem: value
            .to_pem(LineEnding::LF)
            .map_err(|e| CertError::encoding(what, e))?,
        signed_sha256: hex::encode(crate::domain::spec::HashAlg::Sha256.digest(tbs)),
    })
}

/// UTCTime through 2049, GeneralizedTime after (RFC 5280 section 4.1.2.5).
fn x509_time(unix: u64) -> Result<Time, CertError> {
    let d = Duration::from_secs(unix);
    match UtcTime::from_unix_duration(d) {
        Ok(t) => Ok(Time::UtcTime(t)),
        Err(_) => GeneralizedTime::from_unix_duration(d)
            .map(Time::GeneralTime)
            .map_err(|e| CertError::ValidityEnd(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use der::Decode;

    use super::*;
    use crate::csr::subject;

    fn ed25519_spki() -> SubjectPublicKeyInfoOwned {
        use p256::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        SubjectPublicKeyInfoOwned::from_der(key.to_public_key_der().unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn csr_signs_exactly_the_request_info() {
        let name = subject::parse("CN=t,O=示例公司").unwrap();
        let ext = vec![
            extension(
                "x",
                der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17"),
                false,
                &der::asn1::Null,
            )
            .unwrap(),
        ];
        let mut seen = Vec::new();
        let signed = csr(
            name,
            ed25519_spki(),
            ext,
            SigningAlgorithm::Ed25519,
            |tbs| {
                seen = tbs.to_vec();
                Ok(vec![7; 64])
            },
        )
        .unwrap();
        let req = CertReq::from_der(&signed.der).unwrap();
        assert_eq!(req.info.to_der().unwrap(), seen);
        assert_eq!(
            req.info.attributes.len(),
            1,
            "one extensionRequest attribute"
        );
        assert_eq!(req.signature.raw_bytes(), &[7; 64]);
        assert!(
            signed
                .pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n")
        );
    }

    #[test]
    fn csr_without_extensions_has_no_attributes() {
        let signed = csr(
            subject::parse("CN=t").unwrap(),
            ed25519_spki(),
            vec![],
            SigningAlgorithm::Ed25519,
            |_| Ok(vec![1; 64]),
        )
        .unwrap();
        assert!(
            CertReq::from_der(&signed.der)
                .unwrap()
                .info
                .attributes
                .is_empty()
        );
    }

    #[test]
    fn self_signed_certificate_fields() {
        let fields = CertFields {
            serial: vec![0x12, 0x34],
            not_before: 1_700_000_000,
            not_after: 2_600_000_000,
        };
        let signed = self_signed(
            subject::parse("CN=t").unwrap(),
            ed25519_spki(),
            vec![],
            &fields,
            SigningAlgorithm::Ed25519,
            |_| Ok(vec![1; 64]),
        )
        .unwrap();
        let cert = Certificate::from_der(&signed.der).unwrap();
        let tbs = &cert.tbs_certificate;
        assert_eq!(tbs.issuer, tbs.subject);
        assert_eq!(tbs.serial_number.as_bytes(), &[0x12, 0x34]);
        assert!(matches!(tbs.validity.not_before, Time::UtcTime(_)));
        assert!(
            matches!(tbs.validity.not_after, Time::GeneralTime(_)),
            "after 2049"
        );
        assert_eq!(tbs.extensions.as_ref().unwrap().len(), 2, "SKI and AKI");
        assert_eq!(tbs.signature, cert.signature_algorithm);
    }
}
