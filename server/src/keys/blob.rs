//! The SYMMETRIC_DEFAULT ciphertext blob: what Encrypt and GenerateDataKey return and
//! Decrypt takes, self-describing so that Decrypt needs no key id.
//!
//! ```text
//! format 1 (version 1 of the key: every blob of a key that was never rotated)
//! offset  size  field
//! 0       4     magic "HSMD"
//! 4       1     format, 1
//! 5       16    key id (the UUID's 16 bytes)
//! 21      12    IV (96 bits from the token's RNG)
//! 33      n     AES-256-GCM ciphertext (n = plaintext length)
//! 33+n    16    GCM tag (128 bits)
//!
//! format 2 (key version 2 and later, after RotateKey)
//! 0       4     magic "HSMD"
//! 4       1     format, 2
//! 5       16    key id
//! 21      4     key version (big-endian u32, >= 2)
//! 25      12    IV, then ciphertext and tag as above
//! ```
//!
//! The GCM AAD is the header (21 or 25 bytes) followed by the caller's AAD, so the
//! format, key id and key version are authenticated too. A key's first version keeps
//! format 1, so blobs of keys that never rotate are byte for byte what hsmd wrote before
//! keys had versions, and old blobs need no rewriting.

use uuid::Uuid;

/// First bytes of every blob.
pub(crate) const MAGIC: &[u8; 4] = b"HSMD";
/// The format of blobs of a key's version 1.
pub(crate) const VERSION: u8 = 1;
/// The format of blobs of later key versions.
pub(crate) const VERSIONED: u8 = 2;
/// Magic, format and key id (format 1).
pub(crate) const HEADER_LEN: usize = 4 + 1 + 16;
/// Format 2's header: format 1's and the key version.
pub(crate) const VERSIONED_HEADER_LEN: usize = HEADER_LEN + 4;
/// GCM IV length (96 bits).
pub(crate) const IV_LEN: usize = 12;
/// GCM tag length (128 bits).
pub(crate) const TAG_LEN: usize = 16;
/// A blob of an empty plaintext.
pub(crate) const MIN_LEN: usize = HEADER_LEN + IV_LEN + TAG_LEN;

/// A parsed blob, borrowing from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blob<'a> {
    pub(crate) key_id: Uuid,
    /// The key version that made it (1 for format 1).
    pub(crate) key_version: u32,
    /// Magic, format, key id (and key version): the first part of the GCM AAD.
    pub(crate) header: &'a [u8],
    pub(crate) iv: &'a [u8],
    /// Ciphertext followed by the tag, as C_Decrypt takes it.
    pub(crate) ciphertext_and_tag: &'a [u8],
}

/// Parses a blob; the error says what is wrong with it.
pub(crate) fn parse(bytes: &[u8]) -> Result<Blob<'_>, String> {
    if bytes.len() < MIN_LEN {
        return Err(format!(
            "{} bytes is too short for an hsmd ciphertext blob (at least {MIN_LEN}): truncated, or not a blob from Encrypt",
            bytes.len()
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err("not an hsmd ciphertext blob (no \"HSMD\" magic)".into());
    }
    let key_id = Uuid::from_slice(&bytes[5..HEADER_LEN]).map_err(|e| e.to_string())?;
    let (key_version, header_len) = match bytes[4] {
        VERSION => (1, HEADER_LEN),
        VERSIONED if bytes.len() >= MIN_LEN + 4 => {
            let mut v = [0; 4];
            v.copy_from_slice(&bytes[HEADER_LEN..VERSIONED_HEADER_LEN]);
            match u32::from_be_bytes(v) {
                n if n >= 2 => (n, VERSIONED_HEADER_LEN),
                n => {
                    return Err(format!(
                        "format 2 blob names key version {n}; it starts at 2"
                    ));
                }
            }
        }
        VERSIONED => {
            return Err(format!(
                "{} bytes is too short for a format 2 hsmd ciphertext blob (at least {})",
                bytes.len(),
                MIN_LEN + 4
            ));
        }
        other => {
            return Err(format!(
                "blob format version {other} is not supported (this hsmd reads versions {VERSION} and {VERSIONED})"
            ));
        }
    };
    Ok(Blob {
        key_id,
        key_version,
        header: &bytes[..header_len],
        iv: &bytes[header_len..header_len + IV_LEN],
        ciphertext_and_tag: &bytes[header_len + IV_LEN..],
    })
}

/// The header of a new blob for version `key_version` of `key_id`.
pub(crate) fn header(key_id: Uuid, key_version: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(VERSIONED_HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.push(if key_version <= 1 { VERSION } else { VERSIONED });
    h.extend_from_slice(key_id.as_bytes());
    if key_version > 1 {
        h.extend_from_slice(&key_version.to_be_bytes());
    }
    h
}

/// The AAD handed to the token: the blob header, then the caller's AAD.
pub(crate) fn gcm_aad(header: &[u8], caller_aad: &[u8]) -> Vec<u8> {
    [header, caller_aad].concat()
}

/// Assembles a blob from its header, IV and the token's ciphertext-and-tag.
pub(crate) fn assemble(header: &[u8], iv: &[u8], ciphertext_and_tag: &[u8]) -> Vec<u8> {
    [header, iv, ciphertext_and_tag].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let id = Uuid::new_v4();
        let h = header(id, 1);
        assert_eq!(h.len(), HEADER_LEN);
        let blob = assemble(&h, &[7; IV_LEN], &[1, 2, 3, 4]);
        assert_eq!(&blob[..5], b"HSMD\x01");
        assert_eq!(&blob[5..21], id.as_bytes());
        let p = parse(&blob[..]).unwrap_err();
        assert!(p.contains("too short"), "{p}");
        let blob = assemble(&h, &[7; IV_LEN], &[5; 20]);
        let p = parse(&blob).unwrap();
        assert_eq!(p.key_id, id);
        assert_eq!(p.key_version, 1);
        assert_eq!(p.iv, &[7; IV_LEN]);
        assert_eq!(p.ciphertext_and_tag, &[5; 20]);
        assert_eq!(gcm_aad(p.header, b"ctx"), [&h[..], b"ctx"].concat());
    }

    #[test]
    fn bad_blobs_say_why() {
        let blob = assemble(&header(Uuid::nil(), 1), &[0; IV_LEN], &[0; TAG_LEN]);
        assert!(parse(&blob).is_ok());
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert!(parse(&bad).unwrap_err().contains("magic"));
        let mut bad = blob.clone();
        bad[4] = 3;
        assert!(parse(&bad).unwrap_err().contains("version 3"));
        assert!(
            parse(&blob[..MIN_LEN - 1])
                .unwrap_err()
                .contains("too short")
        );
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn later_versions_are_format_2() {
        let id = Uuid::new_v4();
        let h = header(id, 7);
        assert_eq!(h.len(), VERSIONED_HEADER_LEN);
        assert_eq!(&h[..5], b"HSMD\x02");
        assert_eq!(&h[21..25], &7u32.to_be_bytes());
        let blob = assemble(&h, &[9; IV_LEN], &[3; TAG_LEN + 2]);
        let p = parse(&blob).unwrap();
        assert_eq!((p.key_id, p.key_version), (id, 7));
        assert_eq!(p.header, &h[..]);
        assert_eq!(p.iv, &[9; IV_LEN]);
        assert_eq!(p.ciphertext_and_tag, &[3; TAG_LEN + 2]);
        // A format 2 blob never names version 0 or 1, nor is shorter than its header.
        let mut bad = blob.clone();
        bad[21..25].copy_from_slice(&1u32.to_be_bytes());
        assert!(parse(&bad).unwrap_err().contains("starts at 2"));
        assert!(
            parse(&blob[..MIN_LEN + 3])
                .unwrap_err()
                .contains("format 2")
        );
    }
}
