//! Audit log: one JSON-lines record per call, hash-chained, made durable before the
//! call is answered; queries and chain verification over the file.

pub mod record;
pub mod verify;
mod writer;

use std::io::{BufRead, BufReader};
use std::path::Path;

pub use record::{AuditEvent, AuditRecord, Outcome};
pub use verify::{ChainHead, VerifyReport};
pub use writer::AuditLog;

/// Audit failures. Any of them makes the call that needed a record fail UNAVAILABLE.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log I/O: {0}")]
    Io(String),
    #[error("audit log chain is broken: {0}")]
    Broken(String),
}

/// Filters of a query; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// RFC 3339 bounds compared as UTC text (records are written in one format).
    pub start: Option<String>,
    pub end: Option<String>,
    pub principal: Option<String>,
    /// Matches `key_id` or `alias`.
    pub key: Option<String>,
    /// Full method path, or its last segment ("Sign").
    pub method: Option<String>,
    pub outcome: Option<Outcome>,
    pub limit: usize,
}

impl AuditQuery {
    /// True if a record passes every filter.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| r.method == m || r.method.rsplit('/').next() == Some(m));
        self.start.as_deref().is_none_or(|s| r.time.as_str() >= s)
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

/// Reads the log and sends each matching record (with its line) to `emit`, oldest
/// first, until `emit` returns false or the limit is reached. Blocking.
pub fn query_file(
    path: &Path,
    q: &AuditQuery,
    mut emit: impl FnMut(AuditRecord, String) -> bool,
) -> Result<(), AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AuditError::Io(format!("{}: {e}", path.display()))),
    };
    let mut sent = 0;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| AuditError::Io(e.to_string()))?;
        let Ok(rec) = serde_json::from_str::<AuditRecord>(&line) else {
            continue;
        };
        if q.matches(&rec) {
            sent += 1;
            if !emit(rec, line) || sent >= q.limit {
                break;
            }
        }
    }
    Ok(())
}
