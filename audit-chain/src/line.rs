//! A record's line read in place, without building an [`AuditRecord`]: the fast path of
//! the offline verifier and of the offline query.
//!
//! [`LineView::parse`] accepts exactly the lines `AuditRecord::to_line` writes: the fields
//! in their fixed order, strings escaped as serde_json escapes them, numbers without
//! leading zeros, `node`, `note` and `checkpoint` only when set, `hash` last. For such a
//! line the record's body (what its `hash` covers) is the line up to `,"hash":"` followed
//! by `}`, so the verifier hashes the bytes as read instead of serializing the record
//! again.
//! Any other line (edited by hand, or not a record at all) is refused, and the caller
//! falls back to the full serde path, which names what is wrong.
//!
//! String fields are returned as their escaped bytes: canonical escaping is one-to-one,
//! so two strings are equal exactly when their escaped forms are (see [`escaped`]).

use sha2::{Digest, Sha256};

use crate::record::Outcome;

/// A checkpoint object, in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointView<'a> {
    pub seq: u64,
    pub hash: &'a [u8],
    pub signature: &'a [u8],
}

/// One canonical record line, in place (string fields escaped, without quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineView<'a> {
    pub seq: u64,
    pub time: &'a [u8],
    pub principal: &'a [u8],
    pub method: &'a [u8],
    pub key_id: &'a [u8],
    pub alias: &'a [u8],
    pub outcome: Outcome,
    pub checkpoint: Option<CheckpointView<'a>>,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// Length of the line before `,"hash":"`.
    body_end: usize,
    line: &'a [u8],
}

impl<'a> LineView<'a> {
    /// Reads a line (without its newline) if it is exactly as hsmd writes records.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let mut c = Cursor { b: line, i: 0 };
        c.lit(b"{\"seq\":")?;
        let seq = c.number()?;
        if c.peek(b",\"node\":") && c.field(b",\"node\":")?.is_empty() {
            return None; // an empty node (a single node's record) is never written
        }
        let time = c.field(b",\"time\":")?;
        c.field(b",\"request_id\":")?;
        let principal = c.field(b",\"principal\":")?;
        c.field(b",\"peer\":")?;
        let method = c.field(b",\"method\":")?;
        let key_id = c.field(b",\"key_id\":")?;
        let alias = c.field(b",\"alias\":")?;
        c.field(b",\"algorithm\":")?;
        c.field(b",\"message_type\":")?;
        c.field(b",\"input_sha256\":")?;
        let outcome = outcome(c.field(b",\"outcome\":")?)?;
        c.field(b",\"status\":")?;
        c.field(b",\"reason\":")?;
        c.lit(b",\"duration_us\":")?;
        c.number()?;
        if c.peek(b",\"note\":") && c.field(b",\"note\":")?.is_empty() {
            return None; // an empty note is never written
        }
        let checkpoint = if c.peek(b",\"checkpoint\":") {
            c.lit(b",\"checkpoint\":{\"seq\":")?;
            let seq = c.number()?;
            let hash = c.field(b",\"hash\":")?;
            let signature = c.field(b",\"signature\":")?;
            c.lit(b"}")?;
            Some(CheckpointView {
                seq,
                hash,
                signature,
            })
        } else {
            None
        };
        let prev_hash = c.field(b",\"prev_hash\":")?;
        let body_end = c.i;
        let hash = c.field(b",\"hash\":")?;
        c.lit(b"}")?;
        if c.i != line.len() || hash.is_empty() || (!line.is_ascii() && !utf8(line)) {
            return None;
        }
        Some(LineView {
            seq,
            time,
            principal,
            method,
            key_id,
            alias,
            outcome,
            checkpoint,
            prev_hash,
            hash,
            body_end,
            line,
        })
    }

    /// True when `hash` is the SHA-256 of the record's body (its own-hash check).
    pub fn hash_ok(&self) -> bool {
        let mut h = Sha256::new();
        h.update(&self.line[..self.body_end]);
        h.update(b"}");
        let digest = h.finalize();
        let mut hex = [0u8; 64];
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest.iter().enumerate() {
            hex[2 * i] = DIGITS[usize::from(b >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
        self.hash == hex
    }
}

/// `s` escaped as serde_json escapes it, without the quotes: the form [`LineView`]'s
/// fields are compared in.
pub fn escaped(s: &str) -> Vec<u8> {
    let mut quoted = serde_json::to_vec(s).expect("a string serializes");
    quoted.pop();
    quoted.remove(0);
    quoted
}

fn outcome(s: &[u8]) -> Option<Outcome> {
    Some(match s {
        b"ok" => Outcome::Ok,
        b"denied" => Outcome::Denied,
        b"invalid" => Outcome::Invalid,
        b"failed" => Outcome::Failed,
        b"throttled" => Outcome::Throttled,
        _ => return None,
    })
}

fn utf8(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok()
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self, lit: &[u8]) -> bool {
        self.b[self.i..].starts_with(lit)
    }

    fn lit(&mut self, lit: &[u8]) -> Option<()> {
        if !self.peek(lit) {
            return None;
        }
        self.i += lit.len();
        Some(())
    }

    /// A decimal u64 as serde_json writes it.
    fn number(&mut self) -> Option<u64> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(&d) = self.b.get(self.i).filter(|d| d.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let len = self.i - start;
        (len == 1 || (len > 1 && self.b[start] != b'0')).then_some(n)
    }

    /// `key` then a string; the string's escaped bytes.
    fn field(&mut self, key: &[u8]) -> Option<&'a [u8]> {
        self.lit(key)?;
        self.lit(b"\"")?;
        let start = self.i;
        loop {
            // Vectorized: the next quote or backslash, then no control byte before it.
            let rest = &self.b[self.i..];
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..at].iter().any(|&c| c < 0x20) {
                return None;
            }
            self.i += at;
            if rest[at] == b'"' {
                break;
            }
            self.escape()?;
        }
        let s = &self.b[start..self.i];
        self.i += 1;
        Some(s)
    }

    /// One escape sequence, accepted only in the form serde_json writes.
    fn escape(&mut self) -> Option<()> {
        let next = *self.b.get(self.i + 1)?;
        if matches!(next, b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') {
            self.i += 2;
            return Some(());
        }
        let u = self.b.get(self.i + 1..self.i + 6)?;
        let hex = |d: u8| match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        };
        if !u.starts_with(b"u00") {
            return None;
        }
        let v = hex(u[3])? * 16 + hex(u[4])?;
        // Controls with a short form (\b \t \n \f \r) are never written as \u00XX.
        if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
            return None;
        }
        self.i += 6;
        Some(())
    }
}

#[cfg(test)]
mod tests;
