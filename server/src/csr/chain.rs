//! Certificate chains as callers send them (PEM text or DER, leaf first) and as the store
//! keeps them (the certificates' DER, concatenated): reading, checking that each
//! certificate is followed by its issuer, and that the leaf certifies the key.
//!
//! The original DER bytes of each certificate are kept as given: re-encoding a decoded
//! certificate could change bytes that its issuer's signature covers.

use base64::Engine;
use der::{Decode, Encode, Reader, SliceReader};
use uuid::Uuid;
use x509_cert::certificate::Certificate;

use super::CertError;
use super::subject::to_rfc4514;

/// Largest chain accepted, in bytes (PEM or DER).
pub(crate) const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Most certificates in a chain.
pub(crate) const MAX_CHAIN_CERTS: usize = 10;

/// A chain read and decoded: leaf first.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) certs: Vec<Certificate>,
    /// Each certificate's DER as given.
    pub(crate) der: Vec<Vec<u8>>,
}

/// What a certificate says, for answers and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// Hex, upper case.
    pub(crate) serial: String,
    /// Unix seconds.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

fn bad(msg: String) -> CertError {
    CertError::InvalidCertificate(msg)
}

/// Reads a chain given as PEM (one or more CERTIFICATE blocks) or DER (one or more
/// certificates back to back).
pub(crate) fn parse(input: &[u8]) -> Result<Chain, CertError> {
    if input.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad("no certificate given".into()));
    }
    if input.len() > MAX_CHAIN_BYTES {
        return Err(bad(format!(
            "{} bytes; at most {MAX_CHAIN_BYTES} are allowed",
            input.len()
        )));
    }
    let der = if input.windows(11).any(|w| w == b"-----BEGIN ") {
        pem_blocks(input)?
    } else {
        der_certs(input)?
    };
    if der.len() > MAX_CHAIN_CERTS {
        return Err(bad(format!(
            "{} certificates; at most {MAX_CHAIN_CERTS} are allowed",
            der.len()
        )));
    }
    let mut certs = Vec::with_capacity(der.len());
    for (i, d) in der.iter().enumerate() {
        certs.push(Certificate::from_der(d).map_err(|e| {
            bad(format!(
                "certificate {}: not an X.509 certificate ({e})",
                i + 1
            ))
        })?);
    }
    Ok(Chain { certs, der })
}

fn pem_blocks(input: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let text = std::str::from_utf8(input).map_err(|_| bad("PEM input is not UTF-8 text".into()))?;
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let n = out.len() + 1;
        if label != "CERTIFICATE" {
            let hint = if label.contains("PRIVATE KEY") {
                " (never send private keys anywhere)"
            } else {
                ""
            };
            return Err(bad(format!(
                "PEM block {n} is '{label}', not a CERTIFICATE{hint}"
            )));
        }
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l.trim() == end {
                closed = true;
                break;
            }
            b64.extend(l.chars().filter(|c| !c.is_whitespace()));
        }
        if !closed {
            return Err(bad(format!("PEM block {n} has no '{end}' line")));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .map_err(|e| bad(format!("PEM block {n}: bad base64 ({e})")))?;
        out.push(der);
    }
    if out.is_empty() {
        return Err(bad("no '-----BEGIN CERTIFICATE-----' block found".into()));
    }
    Ok(out)
}

fn der_certs(input: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let not_der =
        |n: usize, e: der::Error| bad(format!("certificate {n}: neither PEM nor DER X.509 ({e})"));
    let mut reader = SliceReader::new(input).map_err(|e| not_der(1, e))?;
    let mut out = Vec::new();
    while !reader.is_finished() {
        if out.len() >= MAX_CHAIN_CERTS {
            return Err(bad(format!("more than {MAX_CHAIN_CERTS} certificates")));
        }
        let start = usize::try_from(reader.position()).unwrap_or(0);
        Certificate::decode(&mut reader).map_err(|e| not_der(out.len() + 1, e))?;
        let end = usize::try_from(reader.position()).unwrap_or(input.len());
        out.push(input[start..end].to_vec());
    }
    Ok(out)
}

/// Checks that each certificate is followed by its issuer (by name).
pub(crate) fn check_order(chain: &Chain) -> Result<(), CertError> {
    for (i, pair) in chain.certs.windows(2).enumerate() {
        let (child, parent) = (&pair[0].tbs_certificate, &pair[1].tbs_certificate);
        if child.issuer != parent.subject {
            return Err(bad(format!(
                "certificate {} (subject '{}') did not issue certificate {} (issuer '{}'): give the chain \
                 leaf first, each certificate followed by its issuer",
                i + 2,
                to_rfc4514(&parent.subject),
                i + 1,
                to_rfc4514(&child.issuer)
            )));
        }
    }
    Ok(())
}

/// Checks that the leaf certifies the key whose SubjectPublicKeyInfo is `key_spki`.
pub(crate) fn check_leaf_key(chain: &Chain, key: Uuid, key_spki: &[u8]) -> Result<(), CertError> {
    let leaf = &chain.certs[0].tbs_certificate.subject_public_key_info;
    let leaf_der = leaf
        .to_der()
        .map_err(|e| CertError::encoding("leaf SubjectPublicKeyInfo", e))?;
    if leaf_der == key_spki {
        return Ok(());
    }
    let fp = |d: &[u8]| hex::encode(&crate::domain::spec::HashAlg::Sha256.digest(d)[..8]);
    let key_alg = spki::SubjectPublicKeyInfoRef::from_der(key_spki)
        .map(|s| s.algorithm.oid.to_string())
        .unwrap_or_default();
    let leaf_alg = leaf.algorithm.oid.to_string();
    let detail = if leaf_alg != key_alg {
        format!(
            "the certificate is for an {} key, the key is an {} key",
            key_type(&leaf_alg),
            key_type(&key_alg)
        )
    } else {
        format!(
            "certificate key SHA-256 {}..., key SHA-256 {}... (was the certificate issued for another CSR?)",
            fp(&leaf_der),
            fp(key_spki)
        )
    };
    Err(CertError::KeyMismatch { key, detail })
}

/// A readable name for a public key algorithm OID.
fn key_type(oid: &str) -> &str {
    match oid {
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.10045.2.1" => "EC",
        "1.3.101.112" => "Ed25519",
        other => other,
    }
}

/// Subject, issuer, serial and validity of a certificate.
pub(crate) fn info(cert: &Certificate) -> CertInfo {
    let tbs = &cert.tbs_certificate;
    let secs = |t: &x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    CertInfo {
        subject: to_rfc4514(&tbs.subject),
        issuer: to_rfc4514(&tbs.issuer),
        serial: hex::encode_upper(tbs.serial_number.as_bytes()),
        not_before: secs(&tbs.validity.not_before),
        not_after: secs(&tbs.validity.not_after),
    }
}

/// PEM ("CERTIFICATE") of one certificate's DER.
pub(crate) fn to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::build::{CertFields, self_signed};
    use crate::csr::subject;

    fn cert(cn: &str, seed: u8) -> (Vec<u8>, Vec<u8>) {
        use p256::pkcs8::EncodePublicKey;
        let spki_der = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .to_public_key_der()
            .unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).unwrap();
        let fields = CertFields {
            serial: vec![seed],
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
        };
        let name = subject::parse(&format!("CN={cn}")).unwrap();
        let signed = self_signed(
            name,
            spki,
            vec![],
            &fields,
            crate::domain::spec::SigningAlgorithm::Ed25519,
            |_| Ok(vec![0; 64]),
        )
        .unwrap();
        (signed.der, spki_der.as_bytes().to_vec())
    }

    #[test]
    fn pem_and_der_chains() {
        let (a, _) = cert("a", 1);
        let (b, _) = cert("b", 2);
        let pem = format!("subject=CN = a\n{}\nsome text\n{}", to_pem(&a), to_pem(&b));
        let chain = parse(pem.as_bytes()).unwrap();
        assert_eq!(chain.der, vec![a.clone(), b.clone()]);
        let der = parse(&[a.clone(), b.clone()].concat()).unwrap();
        assert_eq!(der.der, vec![a.clone(), b]);
        assert_eq!(info(&der.certs[0]).subject, "CN=a");
        assert_eq!(info(&der.certs[0]).serial, "01");
        assert_eq!(info(&der.certs[0]).not_after, 1_800_000_000);
    }

    #[test]
    fn bad_chains_say_why() {
        let (a, _) = cert("a", 1);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "no certificate given"),
            (b"hello".to_vec(), "neither PEM nor DER"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                "never send private keys",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n".to_vec(),
                "has no '-----END CERTIFICATE-----' line",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
                "bad base64",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                "certificate 1: not an X.509",
            ),
            (
                [a.clone(), b"x".to_vec()].concat(),
                "certificate 2: neither PEM nor DER",
            ),
            (vec![0; MAX_CHAIN_BYTES + 1], "at most 65536"),
            (a.repeat(11), "more than 10 certificates"),
        ];
        for (input, want) in cases {
            let err = parse(&input).expect_err(want).to_string();
            assert!(err.contains(want), "got {err:?}, expected {want:?}");
        }
    }

    #[test]
    fn order_and_key_checks() {
        let (a, a_spki) = cert("a", 1);
        let (b, b_spki) = cert("b", 2);
        let chain = parse(&[a.clone(), b].concat()).unwrap();
        let err = check_order(&chain).unwrap_err().to_string();
        assert!(
            err.contains(
                "certificate 2 (subject 'CN=b') did not issue certificate 1 (issuer 'CN=a')"
            ),
            "{err}"
        );
        let single = parse(&a).unwrap();
        assert!(check_order(&single).is_ok());
        let id = Uuid::nil();
        assert!(check_leaf_key(&single, id, &a_spki).is_ok());
        let err = check_leaf_key(&single, id, &b_spki).unwrap_err();
        assert_eq!(err.reason(), "CERTIFICATE_KEY_MISMATCH");
        assert!(err.to_string().contains("another CSR"), "{err}");
    }
}
