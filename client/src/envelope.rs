//! Envelope files: data of any size encrypted locally with AES-256-GCM under a data key
//! that hsmd generated and wrapped (GenerateDataKey), in chunks, with bounded memory.
//!
//! ```text
//! offset  size  field
//! 0       7     magic "HSMDENV"
//! 7       1     format version, 1
//! 8       4     chunk size C (plaintext bytes per chunk, big-endian; hsmctl writes 65536)
//! 12      8     nonce prefix (random)
//! 20      2     length L of the wrapped data key (big-endian)
//! 22      L     the data key's blob from GenerateDataKey (Decrypt gives the key back)
//! 22+L    ...   chunks: AES-256-GCM ciphertext of C plaintext bytes (fewer in the last
//!               chunk, possibly 0) followed by its 16-byte tag
//! ```
//!
//! Chunk i (from 0) is sealed with nonce = prefix || i (4 bytes, big-endian) and AAD =
//! SHA-256(header bytes 0..22+L) || final flag (1 for the last chunk, else 0). So an
//! altered header or chunk fails its tag, swapped chunks fail (wrong counter), and a
//! file cut at a chunk boundary fails too (its new last chunk was not sealed as final).
//! Memory stays at two chunks whatever the file size.

use std::io::{self, Read, Write};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// First bytes of an envelope file.
pub const MAGIC: &[u8; 7] = b"HSMDENV";
/// The format version written today.
pub const VERSION: u8 = 1;
/// Plaintext bytes per chunk that hsmctl writes.
pub const DEFAULT_CHUNK: u32 = 64 * 1024;
/// Largest chunk size a reader accepts (bounds its memory).
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
const FIXED_HEADER: usize = 22;
const MAX_BLOB: usize = 4096;

/// Why an envelope could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The header is not an envelope header this version reads.
    #[error("not an hsmd envelope file: {0}")]
    Format(String),
    /// A chunk failed authentication.
    #[error(
        "chunk {chunk} failed authentication: the file was altered, its chunks reordered, or it was cut short"
    )]
    Chunk {
        /// Index of the chunk (from 0).
        chunk: u64,
    },
    /// The file ends before its final chunk.
    #[error("the file is truncated: it ends before its final chunk")]
    Truncated,
    /// The data key is not a 32-byte AES-256 key.
    #[error("the data key must be 32 bytes (AES_256)")]
    BadKey,
    /// More chunks than the 32-bit counter can number.
    #[error("input too large for one envelope file (over 2^32 chunks)")]
    TooLarge,
}

/// An envelope file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// First 8 bytes of every chunk nonce.
    pub nonce_prefix: [u8; 8],
    /// The wrapped data key (an hsmd SYMMETRIC_DEFAULT blob).
    pub blob: Vec<u8>,
}

impl Header {
    /// The header's bytes as written at the start of the file.
    /// Refuses what [`Header::read`] would refuse, so no file is written that cannot be
    /// read back.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(EnvelopeError::Format(format!(
                "chunk size {} outside 1..{MAX_CHUNK}",
                self.chunk_size
            )));
        }
        let len = u16::try_from(self.blob.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_BLOB)
            .ok_or_else(|| EnvelopeError::Format("wrapped data key too long".into()))?;
        let mut h = Vec::with_capacity(FIXED_HEADER + self.blob.len());
        h.extend_from_slice(MAGIC);
        h.push(VERSION);
        h.extend_from_slice(&self.chunk_size.to_be_bytes());
        h.extend_from_slice(&self.nonce_prefix);
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&self.blob);
        Ok(h)
    }

    /// Reads and checks a header; returns it and its bytes (for the chunk AAD).
    pub fn read(input: &mut impl Read) -> Result<(Header, Vec<u8>), EnvelopeError> {
        let mut fixed = [0u8; FIXED_HEADER];
        let n = read_full(input, &mut fixed)?;
        if n < FIXED_HEADER || &fixed[..7] != MAGIC {
            return Err(EnvelopeError::Format("no HSMDENV header".into()));
        }
        if fixed[7] != VERSION {
            return Err(EnvelopeError::Format(format!(
                "format version {} (this hsmctl reads version {VERSION})",
                fixed[7]
            )));
        }
        let chunk_size = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if chunk_size == 0 || chunk_size > MAX_CHUNK {
            return Err(EnvelopeError::Format(format!(
                "chunk size {chunk_size} outside 1..{MAX_CHUNK}"
            )));
        }
        let mut nonce_prefix = [0u8; 8];
        nonce_prefix.copy_from_slice(&fixed[12..20]);
        let len = usize::from(u16::from_be_bytes([fixed[20], fixed[21]]));
        if len > MAX_BLOB {
            return Err(EnvelopeError::Format("wrapped data key too long".into()));
        }
        let mut blob = vec![0u8; len];
        if read_full(input, &mut blob)? < len {
            return Err(EnvelopeError::Truncated);
        }
        let header = Header {
            chunk_size,
            nonce_prefix,
            blob,
        };
        let bytes = header.to_bytes()?;
        Ok((header, bytes))
    }
}

struct Sealer {
    key: LessSafeKey,
    prefix: [u8; 8],
    header_hash: [u8; 32],
}

impl Sealer {
    fn new(data_key: &[u8], header: &Header, header_bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| EnvelopeError::BadKey)?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            prefix: header.nonce_prefix,
            header_hash: Sha256::digest(header_bytes).into(),
        })
    }

    fn nonce_aad(&self, counter: u64, last: bool) -> Result<(Nonce, [u8; 33]), EnvelopeError> {
        let counter = u32::try_from(counter).map_err(|_| EnvelopeError::TooLarge)?;
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.prefix);
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        let mut aad = [0u8; 33];
        aad[..32].copy_from_slice(&self.header_hash);
        aad[32] = u8::from(last);
        Ok((Nonce::assume_unique_for_key(nonce), aad))
    }
}

/// Encrypts `input` into `output` (the header is written first); `progress` gets the
/// plaintext bytes done so far. Returns the plaintext length.
pub fn encrypt(
    data_key: &[u8],
    header: &Header,
    input: &mut impl Read,
    output: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let header_bytes = header.to_bytes()?;
    let sealer = Sealer::new(data_key, header, &header_bytes)?;
    output.write_all(&header_bytes)?;
    let chunk = header.chunk_size as usize;
    let mut cur = Vec::with_capacity(chunk + TAG_LEN);
    let mut next = Vec::with_capacity(chunk + TAG_LEN);
    fill(input, &mut cur, chunk)?;
    let (mut counter, mut done) = (0u64, 0u64);
    loop {
        next.clear();
        if cur.len() == chunk {
            fill(input, &mut next, chunk)?;
        }
        let last = next.is_empty();
        let (nonce, aad) = sealer.nonce_aad(counter, last)?;
        let n = cur.len();
        let tag = sealer
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut cur)
            .map_err(|_| EnvelopeError::TooLarge)?;
        output.write_all(&cur)?;
        output.write_all(tag.as_ref())?;
        done += n as u64;
        progress(done);
        if last {
            output.flush()?;
            return Ok(done);
        }
        std::mem::swap(&mut cur, &mut next);
        counter += 1;
    }
}

/// Decrypts the chunks after a header read with [`Header::read`] into `output`.
/// Output written before a failure must be discarded by the caller (hsmctl writes to a
/// temporary file and renames it only on success).
pub fn decrypt(
    data_key: &[u8],
    header: &Header,
    header_bytes: &[u8],
    input: &mut impl Read,
    output: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let sealer = Sealer::new(data_key, header, header_bytes)?;
    let sealed = header.chunk_size as usize + TAG_LEN;
    let mut cur = Vec::with_capacity(sealed);
    let mut next = Vec::with_capacity(sealed);
    fill(input, &mut cur, sealed)?;
    let (mut counter, mut done) = (0u64, 0u64);
    loop {
        if cur.len() < TAG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        next.clear();
        if cur.len() == sealed {
            fill(input, &mut next, sealed)?;
        }
        let last = next.is_empty();
        let (nonce, aad) = sealer.nonce_aad(counter, last)?;
        let plain = sealer
            .key
            .open_in_place(nonce, Aad::from(aad), &mut cur)
            .map_err(|_| EnvelopeError::Chunk { chunk: counter })?;
        output.write_all(plain)?;
        done += plain.len() as u64;
        progress(done);
        if last {
            output.flush()?;
            return Ok(done);
        }
        std::mem::swap(&mut cur, &mut next);
        counter += 1;
    }
}

/// Appends up to `want` bytes from `input` to `buf` (fewer only at end of input).
fn fill(input: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    buf.clear();
    let mut reader = input.take(want as u64);
    reader.read_to_end(buf)?;
    Ok(())
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [42; 32];

    fn header(chunk: u32) -> Header {
        Header {
            chunk_size: chunk,
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7, 8],
            blob: b"wrapped data key".to_vec(),
        }
    }

    fn seal(data: &[u8], chunk: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encrypt(&KEY, &header(chunk), &mut &data[..], &mut out, |_| {}).unwrap();
        out
    }

    fn open(file: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut input = file;
        let (h, bytes) = Header::read(&mut input)?;
        let mut out = Vec::new();
        decrypt(&KEY, &h, &bytes, &mut input, &mut out, |_| {})?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_size_around_chunk_edges() {
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 64, 100] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let file = seal(&data, 16);
            let chunks = len.div_ceil(16).max(1);
            assert_eq!(file.len(), 22 + 16 + len + TAG_LEN * chunks, "len {len}");
            assert_eq!(open(&file).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn truncation_reordering_and_tampering_are_refused() {
        let data = vec![7u8; 64]; // four 16-byte chunks, the last one final
        let file = seal(&data, 16);
        let start = 22 + header(16).blob.len();
        let sealed = 16 + TAG_LEN;
        assert_eq!(file.len(), start + 4 * sealed);
        // Cut at a chunk boundary: the new last chunk was not sealed as final.
        let cut = &file[..start + 3 * sealed];
        assert!(matches!(open(cut), Err(EnvelopeError::Chunk { chunk: 2 })));
        // Cut inside a chunk.
        assert!(open(&file[..file.len() - 5]).is_err());
        // Header only.
        assert!(matches!(
            open(&file[..start]),
            Err(EnvelopeError::Truncated)
        ));
        // Swap chunks 1 and 2.
        let mut swapped = file.clone();
        let (a, b) = (start + sealed, start + 2 * sealed);
        let chunk1 = file[a..b].to_vec();
        swapped.copy_within(b..b + sealed, a);
        swapped[b..b + sealed].copy_from_slice(&chunk1);
        assert!(matches!(
            open(&swapped),
            Err(EnvelopeError::Chunk { chunk: 1 })
        ));
        // One flipped bit anywhere after the magic is refused.
        for i in 7..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad).is_err(), "flip at byte {i} accepted");
        }
        // Trailing garbage after the final chunk.
        let mut longer = file.clone();
        longer.extend_from_slice(&[0; 3]);
        assert!(open(&longer).is_err());
    }

    #[test]
    fn wrong_key_and_bad_headers() {
        let file = seal(b"hello", 16);
        let mut input = &file[..];
        let (h, bytes) = Header::read(&mut input).unwrap();
        let mut out = Vec::new();
        assert!(decrypt(&[1; 32], &h, &bytes, &mut input, &mut out, |_| {}).is_err());
        assert!(matches!(
            open(b"not an envelope file at all"),
            Err(EnvelopeError::Format(_))
        ));
        let mut bad = file.clone();
        bad[8..12].copy_from_slice(&(MAX_CHUNK + 1).to_be_bytes());
        assert!(matches!(open(&bad), Err(EnvelopeError::Format(_))));
        assert!(matches!(
            encrypt(
                &[0; 16],
                &header(16),
                &mut &b""[..],
                &mut Vec::new(),
                |_| {}
            ),
            Err(EnvelopeError::BadKey)
        ));
    }
}
