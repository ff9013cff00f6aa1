//! Property tests of the parsers that read untrusted input: whatever the bytes, they
//! answer Ok or Err, never panic, and what hsmd writes reads back the same. They run
//! in `cargo test` in seconds (the coverage-guided fuzzing of the same parsers is a
//! separate, longer job).

use proptest::prelude::*;
use uuid::Uuid;

use crate::api::kubernetes::parse_key_id;
use crate::auth::limits::Rate;
use crate::csr::san::{self, SanKind};
use crate::csr::{chain, subject};
use crate::encoding::oaep;
use crate::keys::KeyRef;
use crate::keys::blob;

/// Text made of what RFC 4514 subjects and SANs are built from, escapes and all, so
/// the cases reach deep into the parsers rather than failing at the first byte.
fn subject_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r#"([A-Za-z0-9.]{0,6}|CN|O|OU|C|L|ST|DC|UID|emailAddress|2\.5\.4\.3|[=,+;<>#"\\ ]|\\[0-9a-fA-F]{2}|é|\u{0}){0,24}"#,
    )
    .expect("regex")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn blob_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = blob::parse(&bytes);
    }

    #[test]
    fn blob_parse_reads_back_what_hsmd_writes(
        id in any::<[u8; 16]>(),
        version in 1u32..,
        iv in any::<[u8; 12]>(),
        body in proptest::collection::vec(any::<u8>(), 16..80),
    ) {
        let id = Uuid::from_bytes(id);
        let bytes = blob::assemble(&blob::header(id, version), &iv, &body);
        let b = blob::parse(&bytes).expect("a blob hsmd wrote");
        prop_assert_eq!(b.key_id, id);
        prop_assert_eq!(b.key_version, version);
        prop_assert_eq!(b.iv, &iv[..]);
        prop_assert_eq!(b.ciphertext_and_tag, &body[..]);
    }

    #[test]
    fn subject_parse_never_panics(s in subject_like()) {
        let _ = subject::parse(&s);
    }

    #[test]
    fn subject_parse_never_panics_on_any_text(s in "\\PC{0,64}") {
        let _ = subject::parse(&s);
    }

    #[test]
    fn san_parse_never_panics(s in "\\PC{0,64}", kind in 0..4usize) {
        let kind = [SanKind::Dns, SanKind::Ip, SanKind::Uri, SanKind::Email][kind];
        let _ = san::parse(kind, &s);
    }

    #[test]
    fn chain_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = chain::parse(&bytes);
    }

    #[test]
    fn chain_parse_never_panics_on_pem_shaped_input(
        body in "[A-Za-z0-9+/=\n]{0,300}",
        label in "(CERTIFICATE|PRIVATE KEY|X509 CRL|[A-Z ]{0,12})",
    ) {
        let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        let _ = chain::parse(pem.as_bytes());
    }

    #[test]
    fn oaep_decode_never_panics(em in proptest::collection::vec(any::<u8>(), 0..300),
                                label in proptest::collection::vec(any::<u8>(), 0..8)) {
        let _ = oaep::decode::<sha2::Sha256>(&em, &label);
        let _ = oaep::decode::<sha1::Sha1>(&em, &label);
    }

    #[test]
    fn kms_key_id_round_trips(id in any::<[u8; 16]>(), version in 1u32..) {
        let id = Uuid::from_bytes(id);
        prop_assert_eq!(parse_key_id(&crate::api::kubernetes::key_id_of(id, version)), Some((id, version)));
    }

    #[test]
    fn small_text_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = parse_key_id(&s);
        let _ = Rate::parse(&s);
        let _ = KeyRef::parse(&s);
    }
}
