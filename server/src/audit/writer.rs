//! The durable audit writer: one thread that appends records and fsyncs them in groups.
//!
//! Callers hand over an event and wait; the thread takes every event queued at that
//! moment, numbers and chains them, writes them in one go and calls `fdatasync` once
//! for the whole group, then answers each caller. No caller is answered before its
//! record is on disk. If the write or the sync fails, every caller in the group gets an
//! error (their calls fail UNAVAILABLE) and the file is cut back to its last good
//! length so the chain stays whole.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use super::AuditError;
use super::record::{AuditEvent, AuditRecord, now_rfc3339};
use super::verify::{self, ChainHead};

/// Most events written under one fsync.
const MAX_GROUP: usize = 1024;

struct Pending {
    event: AuditEvent,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    path: PathBuf,
    head: Arc<Mutex<ChainHead>>,
}

impl AuditLog {
    /// Opens (creating if needed) the log, checks the existing chain to find its head,
    /// and starts the writer thread. A torn last line (a crash mid-write) or a broken
    /// chain stops start-up with the file and the place named: it is never silently
    /// dropped or continued.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AuditError::Io(format!("{}: {e}", dir.display())))?;
        }
        let report = verify::verify_file(path)?;
        if let Some(bad) = &report.first_bad {
            return Err(AuditError::Broken(format!(
                "{}: line {} (record {}): {}; refusing to continue the chain: move the file aside \
                 after inspecting it with `hsmctl audit verify`",
                path.display(),
                bad.line,
                bad.sequence,
                bad.problem
            )));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))?;
        Self::start(file, report.head, path)
    }

    /// Starts the writer thread on an open file whose chain ends at `head`.
    fn start(file: File, head: ChainHead, path: &Path) -> Result<Self, AuditError> {
        let head = Arc::new(Mutex::new(head));
        let (tx, rx) = mpsc::channel();
        let thread_head = head.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(file, rx, thread_head))
            .map_err(|e| AuditError::Io(e.to_string()))?;
        Ok(AuditLog {
            tx,
            path: path.to_path_buf(),
            head,
        })
    }

    /// Appends an event and waits until it is durable. Returns its sequence number.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { event, reply })
            .map_err(|_| AuditError::Io("audit writer stopped".into()))?;
        rx.await
            .map_err(|_| AuditError::Io("audit writer stopped".into()))?
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number and hash of the last durable record.
    pub fn head(&self) -> ChainHead {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn run(mut file: File, rx: mpsc::Receiver<Pending>, head: Arc<Mutex<ChainHead>>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let mut state = head.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut buf = Vec::with_capacity(group.len() * 512);
        let mut seqs = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for p in group {
            let seq = state.sequence + 1;
            let record = AuditRecord::new(p.event, seq, now_rfc3339(), state.hash.clone());
            let line = record.to_line();
            state = ChainHead {
                sequence: seq,
                hash: record.hash,
            };
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            seqs.push(seq);
            replies.push(p.reply);
        }
        let result = write_durably(&mut file, &buf);
        if result.is_ok() {
            *head.lock().unwrap_or_else(|p| p.into_inner()) = state;
        }
        for (reply, seq) in replies.into_iter().zip(seqs) {
            let _ = reply.send(result.clone().map(|()| seq));
        }
    }
}

fn write_durably(file: &mut File, buf: &[u8]) -> Result<(), AuditError> {
    let before = file.metadata().map(|m| m.len()).ok();
    let result = file.write_all(buf).and_then(|()| file.sync_data());
    result.map_err(|e| {
        tracing::error!(error = %e, "audit log write failed; calls fail UNAVAILABLE");
        // Cut a partial write back so the chain on disk stays whole.
        if let Some(len) = before {
            let _ = file.set_len(len);
        }
        AuditError::Io(format!("audit write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Outcome;

    fn event(m: &str) -> AuditEvent {
        AuditEvent {
            method: m.into(),
            outcome: Some(Outcome::Ok),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn concurrent_appends_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(event(&format!("m{i}"))).await
            }));
        }
        let mut seqs: Vec<u64> = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        let report = verify::verify_file(&path).unwrap();
        assert!(report.first_bad.is_none());
        assert_eq!(report.records, 50);
        assert_eq!(report.head, log.head());
        drop(log);
        let again = AuditLog::open(&path).unwrap();
        assert_eq!(again.append(event("after")).await.unwrap(), 51);
    }

    #[tokio::test]
    async fn unwritable_log_fails_the_call() {
        // /dev/full fails every write with ENOSPC, like a full disk.
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let log = AuditLog::start(full, ChainHead::default(), Path::new("/dev/full")).unwrap();
        assert!(matches!(
            log.append(event("x")).await,
            Err(AuditError::Io(_))
        ));
        // Nothing was made durable, so the head did not move.
        assert_eq!(log.head(), ChainHead::default());
    }

    #[test]
    fn torn_tail_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"{\"seq\":1,\"ti").unwrap();
        let err = AuditLog::open(&path).err().expect("refused");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
