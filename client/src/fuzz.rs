//! The fuzz targets of hsmctl's parsers of untrusted input: envelope files, key files
//! to import and profiles (the audit log's are in `audit_chain::fuzz`). `fuzz/` runs
//! them under AFL++ (`scripts/fuzz TARGET MINUTES`); the unit test replays every seed
//! and every input a fuzzer once crashed on.
//!
//! Not an API: public only so that the `fuzz/` crate can reach them.

use std::path::Path;

use audit_chain::fuzz::Target;

use crate::envelope::Header;
use crate::import::KeyMaterial;

/// Every target of this crate.
pub const TARGETS: &[Target] = &[
    Target {
        name: "envelope_header",
        run: envelope_header,
    },
    Target {
        name: "key_file",
        run: key_file,
    },
    Target {
        name: "profile",
        run: profile,
    },
];

/// The header of an envelope file (`hsmctl decrypt-file`); one that reads is written
/// back and must be the same bytes.
fn envelope_header(data: &[u8]) {
    if let Ok((h, raw)) = Header::read(&mut &data[..]) {
        assert_eq!(h.to_bytes().expect("a header that was read writes"), raw);
    }
}

/// Key files given to `hsmctl import` (PEM or DER, PKCS#8, SEC1, PKCS#1, raw AES).
fn key_file(data: &[u8]) {
    let _ = KeyMaterial::parse(data);
}

/// Client profiles (TOML).
fn profile(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::Profile::parse(s, Path::new("/nonexistent/client.toml"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_and_regressions_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        assert!(audit_chain::fuzz::replay(&root, super::TARGETS) >= super::TARGETS.len());
    }
}
