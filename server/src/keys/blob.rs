//! The SYMMETRIC_DEFAULT ciphertext blob: what Encrypt and GenerateDataKey return and
//! Decrypt takes, self-describing so that Decrypt needs no key id.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "HSMD"
//! 4       1     format version, 1
//! 5       16    key id (the UUID's 16 bytes)
//! 21      12    IV (96 bits from the token's RNG)
//! 33      n     AES-256-GCM ciphertext (n = plaintext length)
//! 33+n    16    GCM tag (128 bits)
//! ```
//!
//! The GCM AAD is the 21-byte header followed by the caller's AAD, so the version and
//! key id are authenticated too.

use uuid::Uuid;

/// First bytes of every blob.
pub(crate) const MAGIC: &[u8; 4] = b"HSMD";
/// The format version written today.
pub(crate) const VERSION: u8 = 1;
/// Magic, version and key id.
pub(crate) const HEADER_LEN: usize = 4 + 1 + 16;
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
    /// Magic, version and key id: the first part of the GCM AAD.
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
    if bytes[4] != VERSION {
        return Err(format!(
            "blob format version {} is not supported (this hsmd reads version {VERSION})",
            bytes[4]
        ));
    }
    let key_id = Uuid::from_slice(&bytes[5..HEADER_LEN]).map_err(|e| e.to_string())?;
    Ok(Blob {
        key_id,
        header: &bytes[..HEADER_LEN],
        iv: &bytes[HEADER_LEN..HEADER_LEN + IV_LEN],
        ciphertext_and_tag: &bytes[HEADER_LEN + IV_LEN..],
    })
}

/// The header of a new blob for `key_id`.
pub(crate) fn header(key_id: Uuid) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(key_id.as_bytes());
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
        let h = header(id);
        assert_eq!(h.len(), HEADER_LEN);
        let blob = assemble(&h, &[7; IV_LEN], &[1, 2, 3, 4]);
        assert_eq!(&blob[..5], b"HSMD\x01");
        assert_eq!(&blob[5..21], id.as_bytes());
        let p = parse(&blob[..]).unwrap_err();
        assert!(p.contains("too short"), "{p}");
        let blob = assemble(&h, &[7; IV_LEN], &[5; 20]);
        let p = parse(&blob).unwrap();
        assert_eq!(p.key_id, id);
        assert_eq!(p.iv, &[7; IV_LEN]);
        assert_eq!(p.ciphertext_and_tag, &[5; 20]);
        assert_eq!(gcm_aad(p.header, b"ctx"), [&h[..], b"ctx"].concat());
    }

    #[test]
    fn bad_blobs_say_why() {
        let blob = assemble(&header(Uuid::nil()), &[0; IV_LEN], &[0; TAG_LEN]);
        assert!(parse(&blob).is_ok());
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert!(parse(&bad).unwrap_err().contains("magic"));
        let mut bad = blob.clone();
        bad[4] = 2;
        assert!(parse(&bad).unwrap_err().contains("version 2"));
        assert!(
            parse(&blob[..MIN_LEN - 1])
                .unwrap_err()
                .contains("too short")
        );
        assert!(parse(&[]).is_err());
    }
}
