//! Who is calling: the principal from the client certificate (its SAN URI, else its
//! subject CN), and whether that principal may call at all. Per-action policy comes
//! later; today the config lists the principals allowed to call.

use std::collections::HashSet;

use der::Decode;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// OID of the subject common name (2.5.4.3).
const CN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// The principal named by a DER client certificate: its first SAN URI, else its CN.
pub fn principal_from_cert(der_bytes: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(der_bytes).ok()?;
    let tbs = &cert.tbs_certificate;
    if let Ok(Some((_, san))) = tbs.get::<SubjectAltName>() {
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                return Some(uri.to_string());
            }
        }
    }
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                return directory_string(&atv.value);
            }
        }
    }
    None
}

fn directory_string(any: &der::Any) -> Option<String> {
    if let Ok(s) = any.decode_as::<der::asn1::Utf8StringRef<'_>>() {
        return Some(s.to_string());
    }
    if let Ok(s) = any.decode_as::<der::asn1::PrintableStringRef<'_>>() {
        return Some(s.to_string());
    }
    any.decode_as::<der::asn1::Ia5StringRef<'_>>()
        .ok()
        .map(|s| s.to_string())
}

/// The principals allowed to call.
#[derive(Debug, Clone)]
pub struct Authorizer {
    allowed: HashSet<String>,
}

impl Authorizer {
    pub fn new(allowed: impl IntoIterator<Item = String>) -> Self {
        Authorizer {
            allowed: allowed.into_iter().collect(),
        }
    }

    /// True if `principal` may call hsmd.
    pub fn allows(&self, principal: &str) -> bool {
        self.allowed.contains(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(san_uri: Option<&str>, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(u) = san_uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn san_uri_wins_over_cn() {
        assert_eq!(
            principal_from_cert(&cert(Some("spiffe://corp/payments"), "pay")).as_deref(),
            Some("spiffe://corp/payments")
        );
        assert_eq!(
            principal_from_cert(&cert(None, "batch-job")).as_deref(),
            Some("batch-job")
        );
        assert_eq!(principal_from_cert(b"not a cert"), None);
    }

    #[test]
    fn allow_list() {
        let a = Authorizer::new(["spiffe://x".to_string()]);
        assert!(a.allows("spiffe://x"));
        assert!(!a.allows("spiffe://y"));
    }
}
