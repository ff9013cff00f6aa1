//! Subjects as RFC 4514 strings: `CN=app.example.com,O=Example Corp,C=CN`.
//!
//! RFC 4514 writes the most specific RDN first; the DER `Name` lists RDNs from the root
//! down, so the parsed RDNs are reversed (as LDAP, OpenSSL's `-nameopt RFC2253` and
//! x509-cert's own parser do): the string above becomes the DER sequence C, O, CN, which
//! `openssl req -text` prints as `C = CN, O = Example Corp, CN = app.example.com`.
//!
//! Values are kept byte-exact: UTF-8 text goes into a UTF8String untouched, so an
//! organisation name such as `示例公司` survives. Every refusal names the part of the
//! subject that is wrong.

use der::Tag;
use der::asn1::{Any, ObjectIdentifier, SetOfVec};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use super::CertError;

/// Longest subject string accepted, in bytes.
pub(crate) const MAX_SUBJECT_BYTES: usize = 2048;
/// Most attributes in one subject.
pub(crate) const MAX_ATTRIBUTES: usize = 32;

/// How an attribute's value is encoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// UTF8String, any text.
    Utf8,
    /// PrintableString: A-Z a-z 0-9 space ' ( ) + , - . / : = ?
    Printable,
    /// IA5String: ASCII.
    Ia5,
    /// PrintableString of exactly two upper-case letters (ISO 3166-1 alpha-2).
    Country,
}

/// An attribute hsmd accepts in a subject.
struct AttrType {
    /// The name written in RFC 4514 strings (matched case-insensitively).
    name: &'static str,
    /// Longer names accepted too (RFC 4519).
    aliases: &'static [&'static str],
    oid: ObjectIdentifier,
    syntax: Syntax,
    /// Upper bound in characters (RFC 5280 appendix A).
    max_chars: usize,
}

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

const ATTRS: &[AttrType] = &[
    AttrType {
        name: "CN",
        aliases: &["commonName"],
        oid: oid("2.5.4.3"),
        syntax: Syntax::Utf8,
        max_chars: 64,
    },
    AttrType {
        name: "O",
        aliases: &["organizationName"],
        oid: oid("2.5.4.10"),
        syntax: Syntax::Utf8,
        max_chars: 64,
    },
    AttrType {
        name: "OU",
        aliases: &["organizationalUnitName"],
        oid: oid("2.5.4.11"),
        syntax: Syntax::Utf8,
        max_chars: 64,
    },
    AttrType {
        name: "C",
        aliases: &["countryName"],
        oid: oid("2.5.4.6"),
        syntax: Syntax::Country,
        max_chars: 2,
    },
    AttrType {
        name: "ST",
        aliases: &["stateOrProvinceName"],
        oid: oid("2.5.4.8"),
        syntax: Syntax::Utf8,
        max_chars: 128,
    },
    AttrType {
        name: "L",
        aliases: &["localityName"],
        oid: oid("2.5.4.7"),
        syntax: Syntax::Utf8,
        max_chars: 128,
    },
    AttrType {
        name: "emailAddress",
        aliases: &[],
        oid: oid("1.2.840.113549.1.9.1"),
        syntax: Syntax::Ia5,
        max_chars: 255,
    },
    AttrType {
        name: "serialNumber",
        aliases: &[],
        oid: oid("2.5.4.5"),
        syntax: Syntax::Printable,
        max_chars: 64,
    },
    AttrType {
        name: "DC",
        aliases: &["domainComponent"],
        oid: oid("0.9.2342.19200300.100.1.25"),
        syntax: Syntax::Ia5,
        max_chars: 63,
    },
    AttrType {
        name: "UID",
        aliases: &["userId"],
        oid: oid("0.9.2342.19200300.100.1.1"),
        syntax: Syntax::Utf8,
        max_chars: 256,
    },
];

/// Characters that must be escaped in a value, or may be (`=`, `#`, space).
const SPECIALS: &[u8] = b",+\"\\<>;=# ";

/// One `TYPE=value` as written, with its value unescaped.
#[derive(Debug)]
struct RawAva {
    /// The attribute as written, for messages.
    text: String,
    attr: String,
    value: Vec<u8>,
}

fn bad(msg: String) -> CertError {
    CertError::Subject(msg)
}

/// Parses an RFC 4514 subject into a DER `Name` (RDNs reversed: see the module docs).
pub(crate) fn parse(subject: &str) -> Result<Name, CertError> {
    if subject.trim().is_empty() {
        return Err(bad(
            "subject is required, e.g. CN=app.example.com,O=Example Corp,C=CN".into(),
        ));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(bad(format!(
            "subject is {} bytes; at most {MAX_SUBJECT_BYTES} are allowed",
            subject.len()
        )));
    }
    let rdns = split(subject)?;
    let count: usize = rdns.iter().map(Vec::len).sum();
    if count > MAX_ATTRIBUTES {
        return Err(bad(format!(
            "subject has {count} attributes; at most {MAX_ATTRIBUTES} are allowed"
        )));
    }
    let mut out = Vec::with_capacity(rdns.len());
    for rdn in rdns.into_iter().rev() {
        let mut avas = Vec::with_capacity(rdn.len());
        for ava in &rdn {
            avas.push(attribute(ava)?);
        }
        let text = rdn
            .iter()
            .map(|a| a.text.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let set = SetOfVec::try_from(avas).map_err(|_| {
            bad(format!(
                "'{text}' repeats the same attribute and value in one RDN"
            ))
        })?;
        out.push(RelativeDistinguishedName(set));
    }
    Ok(RdnSequence(out))
}

/// The RFC 4514 form of a DER name (most specific RDN first), for display.
pub(crate) fn to_rfc4514(name: &Name) -> String {
    name.to_string()
}

/// Splits the string into RDNs of unescaped attributes, in the order written.
fn split(s: &str) -> Result<Vec<Vec<RawAva>>, CertError> {
    let b = s.as_bytes();
    let mut rdns: Vec<Vec<RawAva>> = vec![Vec::new()];
    let mut i = 0;
    loop {
        let start = i;
        // Attribute type, up to '='.
        while i < b.len() && !matches!(b[i], b'=' | b',' | b'+') {
            i += 1;
        }
        let attr = s[start..i].trim();
        if i >= b.len() || b[i] != b'=' {
            let written = s[start..i].trim();
            return Err(bad(if written.is_empty() {
                empty_rdn_message(s, start, &rdns)
            } else {
                format!("'{written}' is not TYPE=value (no '=')")
            }));
        }
        if attr.is_empty() {
            return Err(bad(format!(
                "'{}' has no attribute name before '='",
                excerpt(s, start)
            )));
        }
        i += 1;
        let (value, end) = value(s, i, attr)?;
        let text = s[start..end].trim().to_string();
        rdns.last_mut().expect("one RDN").push(RawAva {
            text,
            attr: attr.to_string(),
            value,
        });
        i = end;
        if i >= b.len() {
            return Ok(rdns);
        }
        if b[i] == b',' {
            rdns.push(Vec::new());
        }
        i += 1;
        if i >= b.len() {
            let sep = b[i - 1] as char;
            return Err(bad(format!(
                "subject ends with '{sep}': an attribute must follow it"
            )));
        }
    }
}

fn empty_rdn_message(s: &str, at: usize, rdns: &[Vec<RawAva>]) -> String {
    let after = rdns.iter().flatten().last().map(|a| a.text.clone());
    match after {
        None if at == 0 => "subject starts with a separator: an attribute must come first".into(),
        None => format!("empty attribute at '{}'", excerpt(s, at)),
        Some(prev) => format!("empty attribute after '{prev}' (two separators in a row)"),
    }
}

/// The text from `at` to the next separator, for messages.
fn excerpt(s: &str, at: usize) -> &str {
    let rest = &s[at..];
    let end = rest.find([',', '+']).unwrap_or(rest.len());
    &rest[..end]
}

/// Reads one value starting at `i`; returns it unescaped and where it ended (at a
/// separator or the end). Unescaped spaces at either end are dropped.
fn value(s: &str, mut i: usize, attr: &str) -> Result<(Vec<u8>, usize), CertError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut pending_spaces = 0;
    let mut started = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b',' | b'+' => break,
            b'\\' => {
                let (byte, used) = escape(b, i, attr)?;
                out.extend(std::iter::repeat_n(b' ', pending_spaces));
                pending_spaces = 0;
                out.push(byte);
                started = true;
                i += used;
                continue;
            }
            b' ' if !started => {}
            b' ' => pending_spaces += 1,
            b'#' if !started => {
                return Err(bad(format!(
                    "the value of {attr} starts with '#' (the hex-encoded BER form is not accepted): \
                     write the value as text, or escape the '#' as \\#"
                )));
            }
            b'"' | b'<' | b'>' | b';' => {
                return Err(bad(format!(
                    "unescaped '{}' in the value of {attr}: write it as \\{}",
                    c as char, c as char
                )));
            }
            _ => {
                out.extend(std::iter::repeat_n(b' ', pending_spaces));
                pending_spaces = 0;
                out.push(c);
                started = true;
            }
        }
        i += 1;
    }
    Ok((out, i))
}

/// Decodes the escape at `b[i]` (a backslash): `\` + special character, or `\XX`.
fn escape(b: &[u8], i: usize, attr: &str) -> Result<(u8, usize), CertError> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    match (b.get(i + 1), b.get(i + 2)) {
        (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
            Ok(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0), 3))
        }
        (Some(&c), _) if SPECIALS.contains(&c) => Ok((c, 2)),
        (None, _) => Err(bad(format!("the value of {attr} ends with a lone '\\'"))),
        (Some(_), _) => {
            let shown: String = String::from_utf8_lossy(&b[i..(i + 3).min(b.len())])
                .chars()
                .take(2)
                .collect();
            Err(bad(format!(
                "bad escape '{shown}' in the value of {attr}: escape one of , + \" \\ < > ; = # space, \
                 or give two hex digits (\\2C)"
            )))
        }
    }
}

/// Checks one attribute and encodes it.
fn attribute(ava: &RawAva) -> Result<AttributeTypeAndValue, CertError> {
    let t = ATTRS
        .iter()
        .find(|t| {
            t.name.eq_ignore_ascii_case(&ava.attr)
                || t.aliases.iter().any(|a| a.eq_ignore_ascii_case(&ava.attr))
        })
        .ok_or_else(|| {
            bad(format!(
                "unknown attribute '{}' in '{}'; allowed: {}",
                ava.attr,
                ava.text,
                ATTRS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let name = t.name;
    let text = String::from_utf8(ava.value.clone()).map_err(|_| {
        bad(format!(
            "the value of {name} is not valid UTF-8 (check its \\XX escapes)"
        ))
    })?;
    if text.is_empty() {
        return Err(bad(format!("{name} has an empty value in '{}'", ava.text)));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "the value of {name} contains the control character U+{:04X}",
            c as u32
        )));
    }
    let chars = text.chars().count();
    if chars > t.max_chars && t.syntax != Syntax::Country {
        return Err(bad(format!(
            "the value of {name} is {chars} characters; at most {} are allowed",
            t.max_chars
        )));
    }
    let tag = match t.syntax {
        Syntax::Utf8 => Tag::Utf8String,
        Syntax::Ia5 if text.is_ascii() => Tag::Ia5String,
        Syntax::Ia5 => {
            return Err(bad(format!(
                "the value of {name} must be ASCII (IA5String): '{text}'"
            )));
        }
        Syntax::Printable => match text.chars().find(|c| !is_printable(*c)) {
            None => Tag::PrintableString,
            Some(c) => {
                return Err(bad(format!(
                    "the value of {name} may use only A-Z a-z 0-9 space ' ( ) + , - . / : = ? (PrintableString); found '{c}'"
                )));
            }
        },
        Syntax::Country if text.len() == 2 && text.bytes().all(|c| c.is_ascii_uppercase()) => {
            Tag::PrintableString
        }
        Syntax::Country => {
            return Err(bad(format!(
                "C must be a two-letter upper-case country code (ISO 3166-1 alpha-2, e.g. CN, DE, US); got '{text}'"
            )));
        }
    };
    let value =
        Any::new(tag, text.into_bytes()).map_err(|e| bad(format!("the value of {name}: {e}")))?;
    Ok(AttributeTypeAndValue { oid: t.oid, value })
}

fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

#[cfg(test)]
mod tests {
    use der::{Encode, Tagged};

    use super::*;

    /// (oid, tag, value) of every attribute, RDN by RDN, in DER order.
    fn flat(name: &Name) -> Vec<Vec<(String, Tag, Vec<u8>)>> {
        name.0
            .iter()
            .map(|rdn| {
                rdn.0
                    .iter()
                    .map(|a| (a.oid.to_string(), a.value.tag(), a.value.value().to_vec()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn rdns_are_reversed_into_der_order() {
        let name = parse("CN=app.example.com,O=Example Corp,C=CN").unwrap();
        let f = flat(&name);
        assert_eq!(f.len(), 3);
        assert_eq!(
            f[0],
            vec![("2.5.4.6".to_string(), Tag::PrintableString, b"CN".to_vec())]
        );
        assert_eq!(
            f[1],
            vec![(
                "2.5.4.10".to_string(),
                Tag::Utf8String,
                b"Example Corp".to_vec()
            )]
        );
        assert_eq!(
            f[2],
            vec![(
                "2.5.4.3".to_string(),
                Tag::Utf8String,
                b"app.example.com".to_vec()
            )]
        );
        assert_eq!(to_rfc4514(&name), "CN=app.example.com,O=Example Corp,C=CN");
        assert!(name.to_der().is_ok());
    }

    #[test]
    fn utf8_values_are_byte_exact() {
        let name = parse("CN=app,O=示例公司,L=Zürich").unwrap();
        let f = flat(&name);
        assert_eq!(f[1][0].2, "示例公司".as_bytes());
        assert_eq!(f[0][0].2, "Zürich".as_bytes());
        // The same organisation written as hex escapes of its UTF-8 bytes.
        let hexed = parse("CN=app,O=\\E7\\A4\\BA\\E4\\BE\\8B\\E5\\85\\AC\\E5\\8F\\B8").unwrap();
        assert_eq!(flat(&hexed)[0][0].2, "示例公司".as_bytes());
    }

    #[test]
    fn escapes() {
        let cases: &[(&str, &[u8])] = &[
            ("CN=a\\,b", b"a,b"),
            ("CN=a\\+b", b"a+b"),
            ("CN=\\\"quoted\\\"", b"\"quoted\""),
            ("CN=back\\\\slash", b"back\\slash"),
            ("CN=\\#hash", b"#hash"),
            ("CN=a\\;b\\<c\\>d\\=e", b"a;b<c>d=e"),
            ("CN=\\20lead and trail\\20", b" lead and trail "),
            ("CN=trail\\ ", b"trail "),
            ("CN=x\\2Cy", b"x,y"),
            ("CN=x\\2cy", b"x,y"),
            ("  CN = spaced value  ", b"spaced value"),
            ("CN=inner  spaces", b"inner  spaces"),
        ];
        for (input, want) in cases {
            let name = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(flat(&name)[0][0].2, *want, "{input}");
        }
    }

    #[test]
    fn multi_valued_rdns() {
        let name = parse("CN=app+UID=42,O=Example").unwrap();
        let f = flat(&name);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].len(), 2, "CN and UID share one RDN");
        let oids: Vec<&str> = f[1].iter().map(|a| a.0.as_str()).collect();
        assert!(oids.contains(&"2.5.4.3") && oids.contains(&"0.9.2342.19200300.100.1.1"));
    }

    #[test]
    fn every_attribute_and_its_encoding() {
        let name = parse(
            "CN=c,O=o,OU=ou,C=DE,ST=st,L=l,emailAddress=a@b.example,serialNumber=AB-12,DC=example,UID=u,commonName=x",
        )
        .unwrap();
        let tags: Vec<Tag> = flat(&name).iter().map(|r| r[0].1).collect();
        // DER order is reversed: commonName first ... CN last.
        assert_eq!(tags[1], Tag::Utf8String); // UID
        assert_eq!(tags[2], Tag::Ia5String); // DC
        assert_eq!(tags[3], Tag::PrintableString); // serialNumber
        assert_eq!(tags[4], Tag::Ia5String); // emailAddress
        assert_eq!(tags[7], Tag::PrintableString); // C
        assert!(
            parse("cn=lower,o=case").is_ok(),
            "attribute names are case-insensitive"
        );
    }

    /// Each malformed subject gets its own message, naming the bad part.
    #[test]
    fn bad_subjects_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "subject is required"),
            ("   ", "subject is required"),
            ("CN", "'CN' is not TYPE=value"),
            ("CN=a,Example", "'Example' is not TYPE=value"),
            ("=value", "no attribute name"),
            ("XX=foo", "unknown attribute 'XX' in 'XX=foo'"),
            ("CN=a,1.2.3=x", "unknown attribute '1.2.3'"),
            ("C=China", "C must be a two-letter upper-case country code"),
            ("C=cn", "got 'cn'"),
            ("C=C1", "two-letter"),
            ("CN=", "CN has an empty value"),
            ("CN=a,O=", "O has an empty value"),
            ("CN=a,,O=b", "empty attribute after 'CN=a'"),
            (",CN=a", "starts with a separator"),
            ("CN=a,", "ends with ','"),
            ("CN=a+", "ends with '+'"),
            ("CN=a+,O=b", "empty attribute after 'CN=a'"),
            ("CN=a\"b", "unescaped '\"' in the value of CN"),
            ("O=a;b", "unescaped ';' in the value of O"),
            ("CN=<x>", "unescaped '<'"),
            ("CN=#0403616263", "starts with '#'"),
            ("CN=a\\", "ends with a lone '\\'"),
            ("CN=a\\q", "bad escape '\\q' in the value of CN"),
            ("CN=a\\4", "bad escape '\\4'"),
            ("CN=\\FF\\FE", "not valid UTF-8"),
            ("CN=a\\0Ab", "control character U+000A"),
            ("DC=bücher", "DC must be ASCII"),
            ("emailAddress=ü@x", "emailAddress must be ASCII"),
            ("serialNumber=a_b", "PrintableString); found '_'"),
            ("CN=a+CN=a", "repeats the same attribute"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (input, want) in cases {
            let err = parse(input).expect_err(input).to_string();
            assert!(
                err.contains(want),
                "{input:?}: got {err:?}, expected it to contain {want:?}"
            );
            assert!(err.starts_with("invalid subject: "), "{err}");
            seen.insert(err);
        }
        // Messages differ except where two inputs share the very same problem.
        assert!(seen.len() >= cases.len() - 2, "messages should be specific");
    }

    #[test]
    fn limits() {
        let long_cn = format!("CN={}", "a".repeat(65));
        assert!(
            parse(&long_cn)
                .unwrap_err()
                .to_string()
                .contains("65 characters; at most 64")
        );
        assert!(
            parse(&format!("CN={}", "示".repeat(64))).is_ok(),
            "limits count characters"
        );
        let many = (0..33)
            .map(|i| format!("OU=u{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            parse(&many)
                .unwrap_err()
                .to_string()
                .contains("33 attributes")
        );
        let huge = format!("CN=a,{}", "O=x,".repeat(600));
        assert!(
            parse(&huge)
                .unwrap_err()
                .to_string()
                .contains("bytes; at most 2048")
        );
    }
}
