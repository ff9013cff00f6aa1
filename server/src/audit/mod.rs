//! Audit log: one JSON-lines record per call, hash-chained, made durable before the
//! call is answered, sealed by signed checkpoints and rotated by size; queries over
//! every file of the log. The record format and the verifier live in `audit-chain`.

pub(crate) mod checkpoint;
mod forward;
mod open;
pub(crate) mod record;
pub(crate) mod standalone;
mod wal;
mod writer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use audit_chain::walk::ChainHead;
pub(crate) use checkpoint::CheckpointSigner;
pub(crate) use record::{AuditEvent, AuditRecord, Outcome};
pub(crate) use writer::{AuditLog, Expected};

/// Audit failures. Any of them makes the call that needed a record fail UNAVAILABLE.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("audit log I/O: {0}")]
    Io(String),
    #[error("audit log chain is broken: {0}")]
    Broken(String),
}

/// Where the log is, and when to checkpoint and rotate it.
#[derive(Debug, Clone)]
pub(crate) struct AuditConfig {
    /// The current file; rotated files sit beside it.
    pub(crate) path: PathBuf,
    /// A checkpoint after this many records...
    pub(crate) checkpoint_every: u64,
    /// ...or this long after the last one, whichever comes first (and at shutdown).
    pub(crate) checkpoint_interval: Duration,
    /// Rotate once the current file reaches this size; 0 = never.
    pub(crate) max_file_bytes: u64,
    /// Also send every record to this syslog receiver (`[audit.forward] syslog`).
    pub(crate) forward: Option<audit_chain::syslog::Target>,
    /// The replica's node id written in every record; empty on a single node.
    pub(crate) node: String,
    /// Size of the write-ahead file (`wal.rs`); 0: none, every group syncs the log.
    pub(crate) wal_bytes: u64,
}

impl AuditConfig {
    /// Defaults for a log at `path`: a checkpoint every 1000 records or 60 s, files of
    /// at most 64 MiB.
    pub(crate) fn at(path: PathBuf) -> Self {
        AuditConfig {
            path,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            max_file_bytes: 64 << 20,
            forward: None,
            node: String::new(),
            wal_bytes: wal::WAL_BYTES,
        }
    }
}

/// Filters of a query; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditQuery {
    /// RFC 3339 bounds compared as UTC text (records are written in one format).
    pub(crate) start: Option<String>,
    pub(crate) end: Option<String>,
    pub(crate) principal: Option<String>,
    /// Matches `key_id` or `alias`.
    pub(crate) key: Option<String>,
    /// Full method path, or its last segment ("Sign").
    pub(crate) method: Option<String>,
    pub(crate) outcome: Option<Outcome>,
    /// Only records numbered at least this.
    pub(crate) min_seq: u64,
    pub(crate) limit: usize,
}

impl AuditQuery {
    /// True if a record passes every filter.
    pub(crate) fn matches(&self, r: &AuditRecord) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| r.method == m || r.method.rsplit('/').next() == Some(m));
        r.seq >= self.min_seq
            && self.start.as_deref().is_none_or(|s| r.time.as_str() >= s)
            && self.end.as_deref().is_none_or(|e| r.time.as_str() < e)
            && self.principal.as_deref().is_none_or(|p| r.principal == p)
            && self
                .key
                .as_deref()
                .is_none_or(|k| r.key_id == k || r.alias == k)
            && method_ok
            && self.outcome.is_none_or(|o| r.outcome == o)
    }
}

/// Reads the log's files in order and sends each matching record (with its line) to
/// `emit`, oldest first, until `emit` returns false or the limit is reached. Blocking.
pub(crate) fn query_files(
    files: &[PathBuf],
    q: &AuditQuery,
    mut emit: impl FnMut(AuditRecord, String) -> bool,
) -> Result<(), AuditError> {
    let mut sent = 0;
    for path in files {
        if !query_file(path, q, &mut sent, &mut emit)? {
            break;
        }
    }
    Ok(())
}

/// One file of [`query_files`]; false once the query is done.
fn query_file(
    path: &Path,
    q: &AuditQuery,
    sent: &mut usize,
    emit: &mut impl FnMut(AuditRecord, String) -> bool,
) -> Result<bool, AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Rotated away between listing and opening: its records are in the next name.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(AuditError::Io(format!("{}: {e}", path.display()))),
    };
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| AuditError::Io(e.to_string()))?;
        let Ok(rec) = serde_json::from_str::<AuditRecord>(&line) else {
            continue;
        };
        if q.matches(&rec) {
            *sent += 1;
            if !emit(rec, line) || *sent >= q.limit {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
