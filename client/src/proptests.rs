//! Property tests of what reads files a user hands hsmctl: envelope headers and key
//! files never panic, whatever the bytes, and a header reads back as written.

use proptest::prelude::*;

use crate::envelope::Header;
use crate::import::KeyMaterial;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn envelope_header_read_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Header::read(&mut bytes.as_slice());
    }

    #[test]
    fn envelope_header_reads_back(
        chunk_size in prop_oneof![1u32..=crate::envelope::MAX_CHUNK, any::<u32>()],
        nonce_prefix in any::<[u8; 8]>(),
        blob in proptest::collection::vec(any::<u8>(), 1..120),
        tail in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let h = Header { chunk_size, nonce_prefix, blob };
        // What the writer accepts, the reader accepts: a refused header is no file.
        let Ok(mut bytes) = h.to_bytes() else { return Ok(()) };
        let written = bytes.clone();
        bytes.extend_from_slice(&tail);
        let (back, raw) = Header::read(&mut bytes.as_slice()).expect("a header hsmctl wrote");
        prop_assert_eq!(back, h);
        prop_assert_eq!(raw, written);
    }

    #[test]
    fn key_file_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = KeyMaterial::parse(&bytes);
    }

    #[test]
    fn pem_shaped_key_files_never_panic(
        body in "[A-Za-z0-9+/=\n]{0,300}",
        label in "(PRIVATE KEY|RSA PRIVATE KEY|EC PRIVATE KEY|EC PARAMETERS|[A-Z ]{0,12})",
    ) {
        let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        let _ = KeyMaterial::parse(pem.as_bytes());
    }
}
