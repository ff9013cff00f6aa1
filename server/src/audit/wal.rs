//! The audit log's write-ahead file: where a group of records is made durable.
//!
//! Appending to the log and `fdatasync`ing it costs three disk waits on ext4 (the data,
//! the inode's new size, the cache flush), and the inode write is the one a call can
//! least afford. So each group is appended to the log *without* a sync, and written
//! durably to a second file instead: `.audit.log.wal` beside the log (hidden, so
//! `hsmctl audit verify audit/*` never sees it), zero-filled to a fixed size once, and
//! overwritten in place from its start, round and round. Its size never changes, so its
//! `fdatasync` has no inode to write. The log itself is synced before the write-ahead
//! file wraps to its start (so nothing still needed is overwritten), before rotation,
//! when the log is sealed, and at start-up.
//!
//! The log keeps its format (JSON lines, nothing else): the write-ahead file holds the
//! very same bytes. After a crash that lost the end of the log (the page cache, not the
//! process), start-up reads the write-ahead file for records that continue the chain
//! where the log ends, checked exactly as `hsmctl audit verify` checks a log (the
//! sequence, the link to the previous hash, the record's own hash), and appends them.
//! Stale bytes from earlier rounds cannot be mistaken for them: their numbers are at or
//! below the log's head, a line cut by a later write is not a whole record, and a
//! record of a failed write (never answered) that survives does not link to the record
//! written in its place, because a retry is written over the same place.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use audit_chain::walk::{self, ChainHead};

use super::{AuditError, open};

/// Size of the write-ahead file: a group never comes near it (at most 1,024 records of
/// about 500 bytes), and the log is synced once per this many bytes written.
pub(crate) const WAL_BYTES: u64 = 1 << 20;

pub(crate) struct Wal {
    file: File,
    size: u64,
    /// Where the next group goes.
    pos: u64,
}

/// The write-ahead file of the log at `log`: `.NAME.wal` in the same folder.
pub(crate) fn path_for(log: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(log.file_name().unwrap_or_default());
    name.push(".wal");
    log.with_file_name(name)
}

/// What the write-ahead file held beyond the log's end.
#[derive(Debug, Default)]
pub(crate) struct Continuation {
    /// Whole lines, newline-terminated, to append to the log.
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: u64,
    pub(crate) head: ChainHead,
    /// Sequence number of the last checkpoint among them (0: none).
    pub(crate) last_checkpoint: u64,
}

impl Wal {
    /// Opens the write-ahead file of `log`, creating it zero-filled to `size` bytes
    /// (written, not just allocated: a first write into an unwritten extent would update
    /// metadata in the sync). `fresh`: the log is a new chain, so whatever the file holds
    /// (a chain whose files were deleted) is zeroed too. The next group goes at its start.
    pub(crate) fn open(log: &Path, size: u64, fresh: bool) -> Result<Wal, AuditError> {
        let path = path_for(log);
        let io = |e| open::io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < size || fresh {
            let zeros = vec![0u8; 64 << 10];
            let mut at = if fresh { 0 } else { len };
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at).map_err(io)?;
                at += n as u64;
            }
            file.sync_all().map_err(io)?;
            open::sync_dir(&path)?;
        }
        Ok(Wal {
            file,
            size: if fresh { size } else { size.max(len) },
            pos: 0,
        })
    }

    /// A write-ahead file on `file` as it is (tests: `/dev/full`).
    #[cfg(test)]
    pub(crate) fn on(file: File, size: u64) -> Wal {
        Wal { file, size, pos: 0 }
    }

    /// The largest group it takes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// True if `len` more bytes fit before the end of the file.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.pos + len as u64 <= self.size
    }

    /// Goes back to the start of the file. Only once the log is synced: what is
    /// overwritten from here on must be durable in the log already.
    pub(crate) fn wrap(&mut self) {
        self.pos = 0;
    }

    /// Writes `buf` at the current place and `fdatasync`s it; moves on only if both
    /// succeeded (a retry goes over the same place, see the module comment).
    pub(crate) fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(buf, self.pos)?;
        self.file.sync_data()?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The records in the file that continue the chain after `head`, in order.
    pub(crate) fn continuation(&self, head: &ChainHead) -> std::io::Result<Continuation> {
        let mut all = Vec::new();
        (&self.file).read_to_end(&mut all)?;
        Ok(continuation(&all, head))
    }
}

/// The whole lines of `wal` that continue the chain after `head` (see the module
/// comment); at each number the first candidate that verifies is taken.
pub(crate) fn continuation(wal: &[u8], head: &ChainHead) -> Continuation {
    let mut by_seq: BTreeMap<u64, Vec<&[u8]>> = BTreeMap::new();
    let mut rest = wal;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(end + 1);
        rest = after;
        if let Some(seq) = seq_of(line).filter(|&s| s > head.sequence) {
            by_seq.entry(seq).or_default().push(line);
        }
    }
    let mut out = Continuation {
        head: head.clone(),
        ..Default::default()
    };
    while let Some(candidates) = by_seq.get(&(out.head.sequence + 1)) {
        let next = candidates.iter().find_map(|line| {
            let r = walk::walk_reader(*line, out.head.clone()).ok()?;
            (r.first_bad.is_none() && r.records == 1).then_some((line, r))
        });
        let Some((line, r)) = next else { break };
        out.bytes.extend_from_slice(line);
        out.records += 1;
        if r.last_checkpoint > 0 {
            out.last_checkpoint = r.last_checkpoint;
        }
        out.head = r.head;
    }
    out
}

/// The number a record line starts with (`{"seq":N,`), if it does.
fn seq_of(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(b"{\"seq\":")?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_chain::record::{AuditEvent, AuditRecord};

    /// A chain of `n` records after `head`, as lines with their newlines.
    fn chain(head: &ChainHead, n: u64, tag: &str) -> (Vec<Vec<u8>>, ChainHead) {
        let mut h = head.clone();
        let mut lines = Vec::new();
        for _ in 0..n {
            let ev = AuditEvent {
                request_id: format!("{tag}-{}", h.sequence + 1),
                method: "/hsmd.v1.KeyService/Sign".into(),
                ..Default::default()
            };
            let r = AuditRecord::new(ev, h.sequence + 1, "2026-12-07T00:00:00Z".into(), h.hash);
            let mut line = r.to_line().into_bytes();
            line.push(b'\n');
            lines.push(line);
            h = ChainHead {
                sequence: r.seq,
                hash: r.hash,
            };
        }
        (lines, h)
    }

    #[test]
    fn only_records_that_continue_the_head_come_back() {
        let (first, at3) = chain(&ChainHead::default(), 3, "a");
        let (second, end) = chain(&at3, 3, "a");
        let lines = [first, second].concat();
        // Wrapped: records 5 and 6 at the start, a cut line, then 1..4 of a round before.
        let mut wal = Vec::new();
        wal.extend_from_slice(&lines[4]);
        wal.extend_from_slice(&lines[5]);
        wal.extend_from_slice(&lines[0][7..]);
        for l in &lines[..4] {
            wal.extend_from_slice(l);
        }
        wal.extend(std::iter::repeat_n(0u8, 300));
        let c = continuation(&wal, &at3);
        assert_eq!(c.records, 3);
        assert_eq!(c.head, end);
        let expected: Vec<u8> = lines[3..].concat();
        assert_eq!(c.bytes, expected);
        // Nothing continues the end of the chain.
        assert_eq!(continuation(&wal, &end).records, 0);
    }

    #[test]
    fn a_failed_group_left_behind_does_not_replace_the_retry() {
        let (base, head) = chain(&ChainHead::default(), 2, "base");
        let (failed, _) = chain(&head, 4, "failed");
        let (retry, end) = chain(&head, 2, "retry");
        // The retry was written over the failed group's place; the failed group's last
        // records survive after it, numbered 5 and 6, linked to the failed record 4.
        let mut wal: Vec<u8> = base.concat();
        let failed_bytes = failed.concat();
        let retry_bytes = retry.concat();
        wal.extend_from_slice(&retry_bytes);
        wal.extend_from_slice(&failed_bytes[retry_bytes.len()..]);
        let c = continuation(&wal, &head);
        assert_eq!(c.records, 2, "{}", String::from_utf8_lossy(&c.bytes));
        assert_eq!(c.head, end);
        assert_eq!(c.bytes, retry_bytes);
    }

    #[test]
    fn a_torn_record_is_not_taken() {
        let (lines, _) = chain(&ChainHead::default(), 2, "t");
        let mut wal = lines[0].clone();
        let mut torn = lines[1].clone();
        let mid = torn.len() / 2;
        torn[mid] ^= 1;
        wal.extend_from_slice(&torn);
        let c = continuation(&wal, &ChainHead::default());
        assert_eq!(c.records, 1);
        assert_eq!(c.bytes, lines[0]);
    }

    #[test]
    fn the_file_is_hidden_beside_the_log() {
        assert_eq!(
            path_for(Path::new("/var/lib/hsmd/audit/audit.log")),
            Path::new("/var/lib/hsmd/audit/.audit.log.wal")
        );
    }
}
