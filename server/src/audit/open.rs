//! Opening the log at start-up: find the chain head across rotated files, check the
//! current file, and recover from a crash mid-write.
//!
//! A torn last line (no newline: hsmd died while writing it, so its call was never
//! answered) is neither dropped silently nor accepted: its bytes are moved aside to
//! `audit.log.torn-TIME` (fsynced), the file is cut back to its last whole record, and
//! a `hsmd/TornLineRemoved` record naming that file, the byte count and the SHA-256 of
//! the torn bytes is appended. Any other break of the chain stops start-up.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use audit_chain::files;
use audit_chain::walk::{self, ChainHead};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::record::{AuditEvent, AuditRecord, Outcome, TORN_LINE_METHOD};
use super::wal::{self, Wal};

/// What start-up found in the log.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) head: ChainHead,
    /// Sequence number of the current file's first record (or of the next one).
    pub(crate) file_first_seq: u64,
    pub(crate) file_len: u64,
    /// Records after the last checkpoint.
    pub(crate) unsigned: u64,
    /// The record to append about a torn line moved aside.
    pub(crate) torn: Option<AuditEvent>,
    /// Where groups are made durable (`None`: in the log itself).
    pub(crate) wal: Option<Wal>,
}

pub(super) fn io(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io(format!("{}: {e}", path.display()))
}

/// Opens (creating if needed) the current file and finds the head of the chain; appends
/// what the write-ahead file of `wal_bytes` (0: none) holds beyond it, and syncs the
/// file.
pub(crate) fn open(path: &Path, wal_bytes: u64) -> Result<Opened, AuditError> {
    let dir = parent(path);
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let all = files::log_files(path).map_err(|e| io(&dir, e))?;
    // No file at all: a new chain (the folder is synced when the file is created, so a
    // crash cannot lose the file and keep its write-ahead file).
    let fresh = all.is_empty();
    let start = match all.iter().rev().find(|f| f.as_path() != path) {
        Some(last_rotated) => last_record(last_rotated)?,
        None => ChainHead::default(),
    };
    let report = walk::walk_file(path, start.clone()).map_err(|e| io(path, e))?;
    let mut torn = None;
    if let Some(bad) = &report.first_bad {
        if !report.torn_tail_only() {
            return Err(AuditError::Broken(format!(
                "{}: line {} (record {}): {}; refusing to continue the chain: inspect it with \
                 `hsmctl audit verify --public-key audit.pem {}` (after a power cut, records \
                 missing there may be in its write-ahead file, .{}.wal)",
                path.display(),
                bad.line,
                bad.sequence,
                bad.problem,
                dir.display(),
                path.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
        torn = Some(move_torn_aside(path, report.good_len, bad.line)?);
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    if fresh {
        sync_dir(path)?;
    }
    let mut last_cp = report.last_checkpoint.max(start.sequence);
    let mut head = report.head;
    let wal_path = wal::path_for(path);
    let wal = match wal_bytes {
        0 => None,
        n => match Wal::open(path, n, fresh) {
            Ok(w) => Some(w),
            // It may hold records the log lost: never go on without reading it.
            Err(e) if wal_path.exists() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, file = %wal_path.display(),
                    "no audit write-ahead file; every group syncs the log itself");
                None
            }
        },
    };
    if let Some(w) = &wal {
        let more = w.continuation(&head).map_err(|e| io(&wal_path, e))?;
        if more.records > 0 {
            file.write_all(&more.bytes).map_err(|e| io(path, e))?;
            tracing::warn!(file = %path.display(), records = more.records, head = more.head.sequence,
                "audit records lost from the end of the log (a crash before the page cache \
                 reached the disk) were restored from its write-ahead file");
            if more.last_checkpoint > 0 {
                last_cp = more.last_checkpoint;
            }
            head = more.head;
        }
    }
    // The write-ahead file is reused from its start: everything before must be durable.
    file.sync_data().map_err(|e| io(path, e))?;
    let file_len = file.metadata().map_err(|e| io(path, e))?.len();
    Ok(Opened {
        file,
        file_first_seq: start.sequence + 1,
        file_len,
        unsigned: head.sequence.saturating_sub(last_cp),
        head,
        torn,
        wal,
    })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The head at the end of a rotated file (its last line must be a whole record).
fn last_record(path: &Path) -> Result<ChainHead, AuditError> {
    let f = File::open(path).map_err(|e| io(path, e))?;
    let mut last = None;
    for line in BufReader::new(f).lines() {
        last = Some(line.map_err(|e| io(path, e))?);
    }
    let Some(line) = last else {
        return Err(AuditError::Broken(format!("{} is empty", path.display())));
    };
    let rec: AuditRecord = serde_json::from_str(&line).map_err(|e| {
        AuditError::Broken(format!(
            "{}: last line is not a record: {e}",
            path.display()
        ))
    })?;
    Ok(ChainHead {
        sequence: rec.seq,
        hash: rec.hash,
    })
}

/// Moves the bytes after `good_len` to `PATH.torn-TIME` and cuts the file back.
fn move_torn_aside(path: &Path, good_len: u64, line: u64) -> Result<AuditEvent, AuditError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.seek(SeekFrom::Start(good_len)).map_err(|e| io(path, e))?;
    let mut torn = Vec::new();
    f.read_to_end(&mut torn).map_err(|e| io(path, e))?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".torn-{stamp}"));
    let aside = path.with_file_name(name);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&aside)
        .map_err(|e| io(&aside, e))?;
    out.write_all(&torn)
        .and_then(|()| out.sync_all())
        .map_err(|e| io(&aside, e))?;
    f.set_len(good_len)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(path, e))?;
    sync_dir(path)?;
    let sha = hex::encode(Sha256::digest(&torn));
    let aside_name = aside.file_name().unwrap_or_default().to_string_lossy();
    tracing::warn!(file = %path.display(), line, bytes = torn.len(), moved_to = %aside.display(),
        "torn last audit line (crash mid-write) moved aside; a TORN_LINE_REMOVED record names it");
    Ok(AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: crate::domain::SYSTEM_PRINCIPAL.into(),
        method: TORN_LINE_METHOD.into(),
        outcome: Some(Outcome::Ok),
        status: "OK".into(),
        reason: "TORN_LINE_REMOVED".into(),
        note: format!(
            "line {line} of {} had no newline ({} bytes, sha256 {sha}): moved to {aside_name}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            torn.len()
        ),
        ..Default::default()
    })
}

/// fsyncs the folder of `path`, so a rename or a new file survives a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<(), AuditError> {
    let dir = parent(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&dir, e))
}
