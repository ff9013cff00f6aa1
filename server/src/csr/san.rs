//! Subject alternative names, key usage and extended key usage: checked one by one, then
//! encoded as X.509 extensions (requested in a CSR's extensionRequest attribute, or
//! written into a self-signed certificate).
//!
//! DNS names must be ASCII: turning an internationalized name into its punycode form
//! (IDNA) is the caller's job, because the right mapping depends on the caller's rules.

use std::net::IpAddr;

use der::Encode;
use der::asn1::{Ia5String, ObjectIdentifier, OctetString};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};

use super::CertError;
use crate::domain::spec::KeySpec;

/// Most subject alternative names in one request.
pub(crate) const MAX_SANS: usize = 100;
const MAX_DNS: usize = 253;
const MAX_URI: usize = 2048;
const MAX_EMAIL: usize = 254;

/// What kind of name a SAN entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SanKind {
    Dns,
    Ip,
    Uri,
    Email,
}

impl SanKind {
    fn prefix(self) -> &'static str {
        match self {
            SanKind::Dns => "dns",
            SanKind::Ip => "ip",
            SanKind::Uri => "uri",
            SanKind::Email => "email",
        }
    }
}

/// Key usage bits a caller can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUsageBit {
    DigitalSignature,
    NonRepudiation,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    CrlSign,
}

/// Extended key usage purposes a caller can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eku {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
}

impl Eku {
    fn oid(self) -> ObjectIdentifier {
        ObjectIdentifier::new_unwrap(match self {
            Eku::ServerAuth => "1.3.6.1.5.5.7.3.1",
            Eku::ClientAuth => "1.3.6.1.5.5.7.3.2",
            Eku::CodeSigning => "1.3.6.1.5.5.7.3.3",
            Eku::EmailProtection => "1.3.6.1.5.5.7.3.4",
            Eku::TimeStamping => "1.3.6.1.5.5.7.3.8",
        })
    }
}

/// The extensions a caller asked for, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestedExtensions {
    pub(crate) sans: Vec<GeneralName>,
    pub(crate) key_usage: Vec<KeyUsageBit>,
    pub(crate) eku: Vec<Eku>,
}

fn bad(kind: SanKind, value: &str, problem: impl std::fmt::Display) -> CertError {
    CertError::San(format!(
        "{}:{} {problem}",
        kind.prefix(),
        crate::keys::truncate(value, 80)
    ))
}

/// Checks one SAN entry and makes its GeneralName.
pub(crate) fn parse(kind: SanKind, value: &str) -> Result<GeneralName, CertError> {
    match kind {
        SanKind::Dns => {
            check_dns(value, true).map_err(|p| bad(kind, value, p))?;
            ia5(kind, value).map(GeneralName::DnsName)
        }
        SanKind::Ip => value.parse::<IpAddr>().map(GeneralName::from).map_err(|_| {
            bad(
                kind,
                value,
                "is not an IPv4 or IPv6 address (e.g. 10.0.0.1, 2001:db8::1)",
            )
        }),
        SanKind::Uri => {
            check_uri(value).map_err(|p| bad(kind, value, p))?;
            ia5(kind, value).map(GeneralName::UniformResourceIdentifier)
        }
        SanKind::Email => {
            check_email(value).map_err(|p| bad(kind, value, p))?;
            ia5(kind, value).map(GeneralName::Rfc822Name)
        }
    }
}

/// Checks a whole list: at most `MAX_SANS`, no entry twice.
pub(crate) fn check_list(sans: &[GeneralName]) -> Result<(), CertError> {
    if sans.len() > MAX_SANS {
        return Err(CertError::San(format!(
            "{} names; at most {MAX_SANS} are allowed",
            sans.len()
        )));
    }
    for (i, s) in sans.iter().enumerate() {
        if sans[..i].contains(s) {
            return Err(CertError::San(format!(
                "name {} repeats an earlier entry",
                i + 1
            )));
        }
    }
    Ok(())
}

fn ia5(kind: SanKind, value: &str) -> Result<Ia5String, CertError> {
    Ia5String::new(value).map_err(|e| bad(kind, value, e))
}

fn check_dns(name: &str, wildcard_ok: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if !name.is_ascii() {
        return Err(
            "is not ASCII: give internationalized names in their punycode (xn--...) form; \
                    converting them (IDNA) is the caller's job"
                .into(),
        );
    }
    if name.len() > MAX_DNS {
        return Err(format!(
            "is {} characters; at most {MAX_DNS} are allowed",
            name.len()
        ));
    }
    if name.ends_with('.') {
        return Err("ends with '.': give the name without the root dot".into());
    }
    for (i, label) in name.split('.').enumerate() {
        if label == "*" && i == 0 && wildcard_ok {
            continue;
        }
        if label.is_empty() {
            return Err("has an empty label ('..' or a leading '.')".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "has a label of {} characters; at most 63 are allowed",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(if c == '*' {
                "may use '*' only as the whole first label (*.example.com)".into()
            } else {
                format!("has the character '{c}'; labels use letters, digits and '-'")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has the label '{label}' starting or ending with '-'"
            ));
        }
    }
    Ok(())
}

fn check_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("is empty".into());
    }
    if !uri.is_ascii() {
        return Err("is not ASCII: percent-encode other characters".into());
    }
    if uri.len() > MAX_URI {
        return Err(format!(
            "is {} characters; at most {MAX_URI} are allowed",
            uri.len()
        ));
    }
    if uri
        .chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err("contains whitespace or control characters".into());
    }
    let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(
            "has no scheme: give an absolute URI such as spiffe://corp/app or https://example.com/"
                .into(),
        );
    }
    Ok(())
}

fn check_email(addr: &str) -> Result<(), String> {
    if !addr.is_ascii() {
        return Err("is not ASCII (internationalized mailboxes are not supported)".into());
    }
    if addr.len() > MAX_EMAIL {
        return Err(format!(
            "is {} characters; at most {MAX_EMAIL} are allowed",
            addr.len()
        ));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("has no '@': expected local@domain".into());
    };
    if local.is_empty()
        || local
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || c == '@')
    {
        return Err("has an empty or malformed local part".into());
    }
    check_dns(domain, false).map_err(|p| format!("has a domain that {p}"))
}

/// Refuses key usage bits that make no sense for the key type.
pub(crate) fn check_key_usage(spec: KeySpec, bits: &[KeyUsageBit]) -> Result<(), CertError> {
    let rsa = spec.rsa_bits().is_some();
    let ec = matches!(spec, KeySpec::EcP256 | KeySpec::EcP384);
    for bit in bits {
        let ok = match bit {
            KeyUsageBit::KeyEncipherment | KeyUsageBit::DataEncipherment => rsa,
            KeyUsageBit::KeyAgreement => ec,
            _ => true,
        };
        if !ok {
            return Err(CertError::KeyUsageNotForSpec { bit: *bit, spec });
        }
    }
    Ok(())
}

impl RequestedExtensions {
    /// The extensions, in the order SAN, key usage, extended key usage. `self_signed`
    /// adds basicConstraints (CA only when keyCertSign is asked for).
    pub(crate) fn to_extensions(&self, self_signed: bool) -> Result<Vec<Extension>, CertError> {
        let mut out = Vec::new();
        if self_signed {
            let ca = self.key_usage.contains(&KeyUsageBit::KeyCertSign);
            out.push(extension(
                "basicConstraints",
                ObjectIdentifier::new_unwrap("2.5.29.19"),
                true,
                &BasicConstraints {
                    ca,
                    path_len_constraint: None,
                },
            )?);
        }
        if !self.sans.is_empty() {
            let san = SubjectAltName(self.sans.clone());
            out.push(extension(
                "subjectAltName",
                ObjectIdentifier::new_unwrap("2.5.29.17"),
                false,
                &san,
            )?);
        }
        if let Some(ku) = self.key_usage_ext() {
            out.push(extension(
                "keyUsage",
                ObjectIdentifier::new_unwrap("2.5.29.15"),
                true,
                &ku,
            )?);
        }
        if !self.eku.is_empty() {
            let mut oids: Vec<ObjectIdentifier> = Vec::new();
            for e in &self.eku {
                if !oids.contains(&e.oid()) {
                    oids.push(e.oid());
                }
            }
            let eku = ExtendedKeyUsage(oids);
            out.push(extension(
                "extendedKeyUsage",
                ObjectIdentifier::new_unwrap("2.5.29.37"),
                false,
                &eku,
            )?);
        }
        Ok(out)
    }

    fn key_usage_ext(&self) -> Option<KeyUsage> {
        let mut acc: Option<KeyUsage> = None;
        for bit in &self.key_usage {
            let flag = match bit {
                KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
                KeyUsageBit::NonRepudiation => KeyUsages::NonRepudiation,
                KeyUsageBit::KeyEncipherment => KeyUsages::KeyEncipherment,
                KeyUsageBit::DataEncipherment => KeyUsages::DataEncipherment,
                KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
                KeyUsageBit::KeyCertSign => KeyUsages::KeyCertSign,
                KeyUsageBit::CrlSign => KeyUsages::CRLSign,
            };
            acc = Some(match acc {
                None => KeyUsage(flag.into()),
                Some(k) => KeyUsage(k.0 | flag),
            });
        }
        acc
    }
}

/// One extension with its value DER-encoded.
pub(crate) fn extension(
    what: &str,
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, CertError> {
    let der = value.to_der().map_err(|e| CertError::encoding(what, e))?;
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(der).map_err(|e| CertError::encoding(what, e))?,
    })
}

#[cfg(test)]
mod tests {
    use der::Decode;

    use super::*;

    #[test]
    fn good_names() {
        for (kind, v) in [
            (SanKind::Dns, "app.example.com"),
            (SanKind::Dns, "*.example.com"),
            (SanKind::Dns, "xn--bcher-kva.example"),
            (SanKind::Dns, "localhost"),
            (SanKind::Ip, "10.0.0.1"),
            (SanKind::Ip, "2001:db8::1"),
            (SanKind::Uri, "spiffe://corp/payments"),
            (SanKind::Uri, "https://example.com/a?b=c"),
            (SanKind::Email, "ops@example.com"),
            (SanKind::Email, "first.last+tag@mail.example.org"),
        ] {
            assert!(parse(kind, v).is_ok(), "{v}");
        }
        let ip = parse(SanKind::Ip, "2001:db8::1").unwrap();
        assert!(matches!(ip, GeneralName::IpAddress(ref o) if o.as_bytes().len() == 16));
    }

    /// Each malformed SAN form gets its own message, naming the entry.
    #[test]
    fn bad_names_name_the_problem() {
        let cases: &[(SanKind, &str, &str)] = &[
            (SanKind::Dns, "", "dns: is empty"),
            (
                SanKind::Dns,
                "bücher.example",
                "dns:bücher.example is not ASCII: give internationalized names in their punycode",
            ),
            (SanKind::Dns, "a..example", "empty label"),
            (SanKind::Dns, ".example", "empty label"),
            (SanKind::Dns, "example.com.", "root dot"),
            (SanKind::Dns, "a_b.example", "the character '_'"),
            (SanKind::Dns, "a b.example", "the character ' '"),
            (SanKind::Dns, "-a.example", "starting or ending with '-'"),
            (
                SanKind::Dns,
                "a.*.example",
                "'*' only as the whole first label",
            ),
            (
                SanKind::Dns,
                "w*.example",
                "'*' only as the whole first label",
            ),
            (
                SanKind::Dns,
                &format!("{}.example", "a".repeat(64)),
                "label of 64 characters",
            ),
            (
                SanKind::Dns,
                &format!("{}a", "a.".repeat(127)),
                "255 characters; at most 253",
            ),
            (
                SanKind::Ip,
                "300.1.1.1",
                "ip:300.1.1.1 is not an IPv4 or IPv6 address",
            ),
            (SanKind::Ip, "10.0.0.1/24", "is not an IPv4 or IPv6 address"),
            (SanKind::Ip, "", "is not an IPv4 or IPv6 address"),
            (SanKind::Uri, "", "uri: is empty"),
            (SanKind::Uri, "no-scheme/path", "has no scheme"),
            (SanKind::Uri, "1http://x", "has no scheme"),
            (SanKind::Uri, "spiffe://corp/a b", "whitespace"),
            (SanKind::Uri, "https://bücher.example/", "percent-encode"),
            (SanKind::Email, "nobody", "has no '@'"),
            (
                SanKind::Email,
                "@example.com",
                "empty or malformed local part",
            ),
            (SanKind::Email, "a@", "has a domain that is empty"),
            (
                SanKind::Email,
                "a@exa mple.com",
                "has a domain that has the character ' '",
            ),
            (
                SanKind::Email,
                "ü@example.com",
                "internationalized mailboxes",
            ),
            (
                SanKind::Email,
                "a@*.example.com",
                "has a domain that may use '*'",
            ),
        ];
        for (kind, value, want) in cases {
            let err = parse(*kind, value).expect_err(value).to_string();
            assert!(
                err.starts_with("invalid subject alternative name: "),
                "{err}"
            );
            assert!(
                err.contains(want),
                "{kind:?} {value:?}: got {err:?}, expected {want:?}"
            );
        }
    }

    #[test]
    fn list_limits() {
        let a = parse(SanKind::Dns, "a.example").unwrap();
        assert!(
            check_list(&[a.clone(), a.clone()])
                .unwrap_err()
                .to_string()
                .contains("name 2 repeats")
        );
        let many: Vec<GeneralName> = (0..101)
            .map(|i| parse(SanKind::Dns, &format!("h{i}.example")).unwrap())
            .collect();
        assert!(
            check_list(&many)
                .unwrap_err()
                .to_string()
                .contains("101 names; at most 100")
        );
    }

    #[test]
    fn key_usage_must_fit_the_key() {
        assert!(check_key_usage(KeySpec::Rsa2048, &[KeyUsageBit::KeyEncipherment]).is_ok());
        assert!(check_key_usage(KeySpec::EcP256, &[KeyUsageBit::KeyAgreement]).is_ok());
        assert!(check_key_usage(KeySpec::EcP256, &[KeyUsageBit::KeyEncipherment]).is_err());
        assert!(check_key_usage(KeySpec::Ed25519, &[KeyUsageBit::KeyAgreement]).is_err());
        assert!(check_key_usage(KeySpec::Ed25519, &[KeyUsageBit::DigitalSignature]).is_ok());
    }

    #[test]
    fn extensions_encode() {
        let ext = RequestedExtensions {
            sans: vec![parse(SanKind::Dns, "a.example").unwrap()],
            key_usage: vec![KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment],
            eku: vec![Eku::ServerAuth, Eku::ClientAuth, Eku::ServerAuth],
        };
        let list = ext.to_extensions(false).unwrap();
        assert_eq!(list.len(), 3);
        assert!(list[1].critical, "keyUsage is critical");
        // digitalSignature (bit 0) + keyEncipherment (bit 2): 0b1010_0000, 5 unused bits.
        assert_eq!(list[1].extn_value.as_bytes(), &[0x03, 0x02, 0x05, 0xa0]);
        let eku = ExtendedKeyUsage::from_der(list[2].extn_value.as_bytes()).unwrap();
        assert_eq!(eku.0.len(), 2, "duplicates dropped");
        let with_bc = ext.to_extensions(true).unwrap();
        assert_eq!(with_bc[0].extn_id.to_string(), "2.5.29.19");
        assert!(
            RequestedExtensions::default()
                .to_extensions(false)
                .unwrap()
                .is_empty()
        );
    }
}
