//! The strict walk over one file: every line must parse, carry the next sequence number
//! and the hash of the line before it. The first record that does not fit is named.
//! hsmd uses it at start-up to find the head of its current file; [`crate::verify`] is
//! the fuller, multi-file report for people.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::record::{AuditRecord, GENESIS_HASH};

/// Sequence number and chain hash of the last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: u64,
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            sequence: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based line number.
    pub line: u64,
    /// The sequence number the record claims, or the one expected if unreadable.
    pub sequence: u64,
    pub problem: String,
    /// The line is the file's last and has no newline.
    pub torn: bool,
}

/// Result of a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkReport {
    pub records: u64,
    pub head: ChainHead,
    pub first_bad: Option<BadRecord>,
    /// Length in bytes of the whole, valid lines before `first_bad`.
    pub good_len: u64,
    /// Sequence number of the last checkpoint record walked (0 if none).
    pub last_checkpoint: u64,
}

impl WalkReport {
    /// True when the only problem is a last line without its newline (a crash while it
    /// was written).
    pub fn torn_tail_only(&self) -> bool {
        self.first_bad.as_ref().is_some_and(|b| b.torn)
    }
}

/// Walks a log file from `start` (the head of the files before it); a missing file is an
/// empty, valid log.
pub fn walk_file(path: &Path, start: ChainHead) -> std::io::Result<WalkReport> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(WalkReport {
                head: start,
                ..Default::default()
            });
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ));
        }
    };
    walk_reader(BufReader::new(file), start)
}

/// Longest line accepted as a record; longer ones are reported, not read whole.
pub const MAX_LINE: u64 = 1 << 20;

/// Walks JSON lines from any reader, starting after `start`.
pub fn walk_reader(mut r: impl BufRead, start: ChainHead) -> std::io::Result<WalkReport> {
    let mut report = WalkReport {
        head: start,
        ..Default::default()
    };
    // Byte offset just after the last whole, valid line (where a torn tail starts).
    let mut good_len = 0u64;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(report);
        }
        line_no += 1;
        let expected = report.head.sequence + 1;
        let bad = |sequence, problem: String| BadRecord {
            line: line_no,
            sequence,
            problem,
            torn: false,
        };
        if buf.len() as u64 == MAX_LINE && buf.last() != Some(&b'\n') {
            report.first_bad = Some(bad(expected, format!("line longer than {MAX_LINE} bytes")));
            return Ok(report);
        }
        if buf.last() != Some(&b'\n') {
            let mut b = bad(expected, "torn line: no newline at end of file".into());
            b.torn = true;
            report.first_bad = Some(b);
            return Ok(report);
        }
        buf.pop();
        let record: AuditRecord = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                report.first_bad = Some(bad(expected, format!("not a valid record: {e}")));
                return Ok(report);
            }
        };
        let problem = if !record.is_intact_line(&buf) {
            Some("record was edited: its hash does not match its content".to_string())
        } else if record.seq != expected {
            Some(format!(
                "sequence {} where {expected} was expected: a record is missing, inserted or moved",
                record.seq
            ))
        } else if record.prev_hash != report.head.hash {
            Some("prev_hash does not match the record before it: a record was removed, inserted or moved".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            report.first_bad = Some(bad(record.seq, p));
            return Ok(report);
        }
        report.records += 1;
        if record.is_checkpoint() {
            report.last_checkpoint = record.seq;
        }
        good_len += n as u64;
        report.good_len = good_len;
        report.head = ChainHead {
            sequence: record.seq,
            hash: record.hash,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AuditEvent, Outcome};

    fn log(n: u64) -> Vec<String> {
        let mut head = ChainHead::default();
        let mut lines = Vec::new();
        for seq in 1..=n {
            let ev = AuditEvent {
                method: format!("m{seq}"),
                outcome: Some(Outcome::Ok),
                ..Default::default()
            };
            let rec = AuditRecord::new(ev, seq, "t".into(), head.hash.clone());
            head = ChainHead {
                sequence: seq,
                hash: rec.hash.clone(),
            };
            lines.push(rec.to_line());
        }
        lines
    }

    fn check(lines: &[String]) -> WalkReport {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        walk_reader(text.as_bytes(), ChainHead::default()).unwrap()
    }

    #[test]
    fn torn_tail_is_told_apart() {
        let lines = log(2);
        let text = format!("{}\n{}", lines[0], &lines[1][..20]);
        let r = walk_reader(text.as_bytes(), ChainHead::default()).unwrap();
        assert!(r.torn_tail_only());
        assert_eq!(r.good_len, lines[0].len() as u64 + 1);
        assert_eq!(r.head.sequence, 1);
    }

    #[test]
    fn intact_chain_verifies() {
        let r = check(&log(5));
        assert_eq!(r.records, 5);
        assert!(r.first_bad.is_none());
    }

    #[test]
    fn edit_delete_swap_are_named() {
        let mut edited = log(5);
        edited[2] = edited[2].replace("m3", "m9");
        assert_eq!(check(&edited).first_bad.unwrap().sequence, 3);

        let mut deleted = log(5);
        deleted.remove(1);
        assert_eq!(check(&deleted).first_bad.unwrap().sequence, 3);

        let mut swapped = log(5);
        swapped.swap(1, 2);
        let bad = check(&swapped).first_bad.unwrap();
        assert_eq!((bad.line, bad.sequence), (2, 3));

        let mut garbage = log(3);
        garbage[1].insert(0, 'x');
        let bad = check(&garbage).first_bad.unwrap();
        assert_eq!((bad.line, bad.sequence), (2, 2));
    }
}
