//! The offline query (`hsmctl audit query ... FILES`): the records of the log files that
//! pass every filter, printed as the lines hsmd wrote, oldest first, without the daemon.
//! Same filters as QueryAudit (`server/src/audit/mod.rs`).
//!
//! It reads each file as a stream of 1 MiB blocks. With `--principal` it looks for
//! `"principal":"<P>"` in the block (as `grep` looks for a word) and reads only the lines
//! that hold it; otherwise it reads every line. A line is read in place
//! ([`LineView`]); one that is not exactly as hsmd writes records goes through serde, as
//! on the server, and one that is not a record is skipped, as on the server. A record
//! whose principal was hand-edited into another escaping of the same text is therefore
//! missed by the `--principal` search; `audit verify` reports such a line as edited.

use std::io::{self, Read, Write};
use std::path::Path;

use memchr::memmem;

use crate::line::{LineView, escaped};
use crate::record::{AuditRecord, Outcome};

/// Read block.
const BLOCK: usize = 1 << 20;

/// Filters of an offline query; `None` matches everything. Times are compared as text in
/// the records' own format (`2026-01-31T12:00:00.000000Z`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub principal: Option<String>,
    /// `key_id` or `alias`.
    pub key: Option<String>,
    /// Full method path, or its last segment ("Sign").
    pub method: Option<String>,
    pub outcome: Option<Outcome>,
    /// At most this many records.
    pub limit: Option<u64>,
}

/// The filters in the escaped form of the lines.
struct Escaped {
    since: Option<Vec<u8>>,
    until: Option<Vec<u8>>,
    principal: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    method: Option<Vec<u8>>,
}

impl Filter {
    /// True if the record passes every filter (limit aside).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let m = self.method.as_deref();
        self.since.as_deref().is_none_or(|s| r.time.as_str() >= s)
            && self.until.as_deref().is_none_or(|u| r.time.as_str() < u)
            && self.principal.as_deref().is_none_or(|p| r.principal == p)
            && self
                .key
                .as_deref()
                .is_none_or(|k| r.key_id == k || r.alias == k)
            && m.is_none_or(|m| r.method == m || r.method.rsplit('/').next() == Some(m))
            && self.outcome.is_none_or(|o| r.outcome == o)
    }

    fn escaped(&self) -> Escaped {
        let e = |s: &Option<String>| s.as_deref().map(escaped);
        Escaped {
            since: e(&self.since),
            until: e(&self.until),
            principal: e(&self.principal),
            key: e(&self.key),
            method: e(&self.method),
        }
    }
}

impl Escaped {
    fn matches(&self, f: &Filter, v: &LineView) -> bool {
        let last = v.method.rsplit(|&b| b == b'/').next();
        self.since.as_deref().is_none_or(|s| v.time >= s)
            && self.until.as_deref().is_none_or(|u| v.time < u)
            && self.principal.as_deref().is_none_or(|p| v.principal == p)
            && self
                .key
                .as_deref()
                .is_none_or(|k| v.key_id == k || v.alias == k)
            && self
                .method
                .as_deref()
                .is_none_or(|m| v.method == m || last == Some(m))
            && f.outcome.is_none_or(|o| v.outcome == o)
    }
}

/// State of one query over several files.
struct Run<'a, W> {
    filter: &'a Filter,
    esc: Escaped,
    needle: Option<memmem::Finder<'static>>,
    out: W,
    found: u64,
}

impl<W: Write> Run<'_, W> {
    /// Handles one line (no newline); false once the limit is reached.
    fn line(&mut self, line: &[u8]) -> io::Result<bool> {
        let hit = match LineView::parse(line) {
            // Times are compared escaped only when they hold no escape (they never do).
            Some(v) if !v.time.contains(&b'\\') => self.esc.matches(self.filter, &v),
            _ => serde_json::from_slice::<AuditRecord>(line).is_ok_and(|r| self.filter.matches(&r)),
        };
        if hit {
            self.out.write_all(line)?;
            self.out.write_all(b"\n")?;
            self.found += 1;
        }
        Ok(self.filter.limit.is_none_or(|l| self.found < l))
    }

    /// Handles the whole lines of `block`; false once the limit is reached.
    fn block(&mut self, block: &[u8]) -> io::Result<bool> {
        let Some(needle) = self.needle.take() else {
            for line in block.split(|&b| b == b'\n') {
                if !self.line(line)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        };
        let mut at = 0;
        let mut more = true;
        while more && let Some(hit) = needle.find(&block[at..]) {
            let hit = at + hit;
            let start = memchr::memrchr(b'\n', &block[..hit]).map_or(0, |i| i + 1);
            let end = memchr::memchr(b'\n', &block[hit..]).map_or(block.len(), |i| hit + i);
            more = self.line(&block[start..end])?;
            at = end;
        }
        self.needle = Some(needle);
        Ok(more)
    }

    /// Reads one file; false once the limit is reached.
    fn file(&mut self, path: &Path) -> io::Result<bool> {
        let mut f = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut buf = vec![0u8; BLOCK];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0); // a line longer than the block
            }
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                // A last line without a newline (torn): a record only if it parses.
                return if filled > 0 {
                    self.line(&buf[..filled])
                } else {
                    Ok(true)
                };
            }
            filled += n;
            let Some(end) = memchr::memrchr(b'\n', &buf[..filled]) else {
                continue;
            };
            if !self.block(&buf[..end])? {
                return Ok(false);
            }
            buf.copy_within(end + 1..filled, 0);
            filled -= end + 1;
        }
    }
}

/// Writes every record of `paths` (in chain order) that passes `filter` to `out`, one
/// line each as written; returns how many.
pub fn query_files(
    paths: &[impl AsRef<Path>],
    filter: &Filter,
    out: impl Write,
) -> io::Result<u64> {
    let esc = filter.escaped();
    let needle = esc.principal.as_ref().map(|p| {
        let mut n = b"\"principal\":\"".to_vec();
        n.extend_from_slice(p);
        n.push(b'"');
        memmem::Finder::new(&n).into_owned()
    });
    let mut run = Run {
        filter,
        esc,
        needle,
        out,
        found: 0,
    };
    for p in paths {
        if !run.file(p.as_ref())? {
            break;
        }
    }
    run.out.flush()?;
    Ok(run.found)
}

#[cfg(test)]
mod tests;
