//! The durable audit writer: one thread that appends records and fsyncs them in groups.
//!
//! Callers hand over an event and wait; the thread takes every event queued at that
//! moment, numbers and chains them, appends them to the log in one go and makes them
//! durable with one `fdatasync` for the whole group (of the write-ahead file, see
//! `wal.rs`, which holds the same bytes), then answers each caller. No caller is
//! answered before its record is on disk. If the write or the sync fails, every caller
//! in the group gets an error (their calls fail UNAVAILABLE) and the file is cut back
//! to its last good length so the chain stays whole.
//!
//! Records of throttled calls are "lazy": their caller does not wait, and they are
//! held (at most [`LAZY_WAIT`]) to share the next group's fsync, so a flood of refused
//! calls cannot turn into a flood of fsyncs. The thread also writes the signed
//! checkpoints (see `checkpoint.rs`) and rotates the file by size.
//!
//! The thread runs as `SCHED_BATCH` (see [`yield_on_wakeup`]): a record queued, or a
//! disk write completed, does not take the CPU from a busy async worker at once, so
//! the worker finishes the calls at hand and the writer then takes their records as one
//! group, instead of one fsync and a pair of context switches for every record or two.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use audit_chain::files;
use tokio::sync::oneshot;

use super::checkpoint::{self, CheckpointSigner};
use super::forward::Forwarder;
use super::record::{AuditEvent, AuditRecord, OUTAGE_METHOD, Outcome, rfc3339};
use super::wal::{self, Wal};
use super::{AuditConfig, AuditError, open};
use crate::clock::SharedClock;
#[cfg(test)]
use crate::clock::SystemClock;
use crate::metrics::Metrics;
use audit_chain::walk::ChainHead;

/// Most events written under one fsync.
const MAX_GROUP: usize = 1024;
/// Longest a lazy (throttled-call) record waits for company before it is written.
pub(crate) const LAZY_WAIT: Duration = Duration::from_millis(25);
/// How long the writer holds a group for records of calls still in flight before its
/// fsync (PostgreSQL's `commit_delay`, with `commit_siblings` = 1): only when another
/// call has begun and not yet handed its record over, so a lone call never waits.
const COMMIT_DELAY: Duration = Duration::from_micros(100);

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Msg {
    /// An event; `None` reply = lazy (nobody waits).
    Event(Box<AuditEvent>, Option<Reply>),
    /// Write a checkpoint now (if any record is unsigned); answers with the head. Only
    /// tests ask for one; the daemon's checkpoints come from the writer's own schedule.
    #[cfg_attr(not(test), allow(dead_code))]
    Checkpoint(oneshot::Sender<Result<ChainHead, AuditError>>),
    /// Seal the log with a checkpoint and stop the thread (dropping the signer, and so
    /// its hold on the token, before the process exits).
    Close(oneshot::Sender<Result<ChainHead, AuditError>>),
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    head: Arc<Mutex<ChainHead>>,
    metrics: Arc<Metrics>,
    /// True while records are written; false from a failed write to the next good one.
    writable: tokio::sync::watch::Receiver<bool>,
    /// Calls begun whose records are not yet queued (see [`Expected`]).
    in_flight: Arc<AtomicUsize>,
    /// The replica whose chain this is (empty: a single node).
    node: String,
}

/// A call whose record the writer should expect: counted from the call's start until
/// it is dropped, just before the record is queued. While any is counted, a group
/// waits [`COMMIT_DELAY`] for company before its fsync.
pub(crate) struct Expected(Arc<AtomicUsize>);

impl Drop for Expected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AuditLog {
    /// [`open_observed`](AuditLog::open_observed) with the system clock, no forwarding
    /// and metrics of its own (tests).
    #[cfg(test)]
    pub(crate) fn open(
        cfg: &AuditConfig,
        signer: Option<Arc<dyn CheckpointSigner>>,
    ) -> Result<Self, AuditError> {
        Self::open_observed(cfg, signer, SystemClock::shared(), Default::default())
    }

    /// Opens the log (see `open.rs`: head across rotated files, torn-line recovery),
    /// appends the record of a torn line moved aside, signs any unsigned tail a crash
    /// left, and starts the writer thread. `clock` stamps the records; checkpoint
    /// intervals stay on the monotonic clock. The writer records into `metrics`, and
    /// forwards each durable record to syslog when `cfg.forward` names a receiver.
    pub(crate) fn open_observed(
        cfg: &AuditConfig,
        signer: Option<Arc<dyn CheckpointSigner>>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuditError> {
        let o = open::open(&cfg.path, cfg.wal_bytes)?;
        let forward = match &cfg.forward {
            Some(target) => Some(
                Forwarder::start(target.clone(), metrics.clone())
                    .map_err(|e| AuditError::Io(format!("audit forwarding thread: {e}")))?,
            ),
            None => None,
        };
        let mut w = Writer {
            file: o.file,
            wal: o.wal,
            path: cfg.path.clone(),
            cfg: cfg.clone(),
            head: Arc::new(Mutex::new(o.head.clone())),
            state: o.head,
            signer,
            clock,
            unsigned: o.unsigned,
            last_checkpoint: Instant::now(),
            file_first_seq: o.file_first_seq,
            file_len: o.file_len,
            metrics,
            forward,
            outage: None,
            writable: tokio::sync::watch::Sender::new(true),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        if let Some(ev) = o.torn {
            w.write(vec![ev])?;
        }
        if w.unsigned > 0 {
            w.checkpoint();
        }
        Self::spawn(w)
    }

    fn spawn(w: Writer) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel();
        let (path, head, metrics) = (w.path.clone(), w.head.clone(), w.metrics.clone());
        let writable = w.writable.subscribe();
        let in_flight = w.in_flight.clone();
        let node = w.cfg.node.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| AuditError::Io(e.to_string()))?;
        Ok(AuditLog {
            node,
            tx,
            path,
            head,
            metrics,
            writable,
            in_flight,
        })
    }

    /// Counts a call whose record will follow; drop the guard before appending it.
    pub(crate) fn expect(&self) -> Expected {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Expected(self.in_flight.clone())
    }

    /// Whether records are being written: false from a failed write (full disk, I/O
    /// error) until the next write succeeds. The server mirrors it into health.
    pub(crate) fn writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.writable.clone()
    }

    /// Appends an event and waits until it is durable. Returns its sequence number.
    pub(crate) async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.queue(Msg::Event(Box::new(event), Some(reply)))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Queues an event without waiting: it is written with the next group (for
    /// throttled calls, which did nothing and must not cost an fsync each).
    pub(crate) fn append_lazy(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.queue(Msg::Event(Box::new(event), None))
    }

    /// Hands an event to the writer, counted in the queue-depth gauge until the writer
    /// takes it (counted first, so the gauge never dips below zero).
    fn queue(&self, m: Msg) -> Result<(), AuditError> {
        self.metrics.audit_queue.inc();
        self.tx.send(m).map_err(|_| {
            self.metrics.audit_queue.dec();
            stopped()
        })
    }

    /// Writes a checkpoint now if any record is not yet covered by one (tests; the
    /// daemon seals the log with [`close`](AuditLog::close)).
    #[cfg(test)]
    pub(crate) async fn checkpoint(&self) -> Result<ChainHead, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(reply))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Seals the log with a last checkpoint and stops the writer; later appends fail.
    /// Call it at shutdown, once no call is in flight.
    pub(crate) async fn close(&self) -> Result<ChainHead, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Close(reply)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Every file of the log, oldest first.
    pub(crate) fn files(&self) -> Result<Vec<PathBuf>, AuditError> {
        files::log_files(&self.path).map_err(|e| AuditError::Io(e.to_string()))
    }

    /// The replica whose chain this is (empty: a single node).
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Sequence number and hash of the last durable record.
    pub(crate) fn head(&self) -> ChainHead {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn stopped() -> AuditError {
    AuditError::Io("audit writer stopped".into())
}

/// The writer thread's state.
struct Writer {
    file: File,
    /// Where groups are made durable; `None`: in `file` itself.
    wal: Option<Wal>,
    path: PathBuf,
    cfg: AuditConfig,
    /// Head as published to callers (durable records only).
    head: Arc<Mutex<ChainHead>>,
    state: ChainHead,
    signer: Option<Arc<dyn CheckpointSigner>>,
    /// Stamps each record's `time`.
    clock: SharedClock,
    /// Records written since the last checkpoint.
    unsigned: u64,
    last_checkpoint: Instant,
    file_first_seq: u64,
    file_len: u64,
    metrics: Arc<Metrics>,
    /// The syslog forwarder, when `[audit.forward]` is set.
    forward: Option<Forwarder>,
    /// Since the first failed write, until one succeeds.
    outage: Option<Outage>,
    writable: tokio::sync::watch::Sender<bool>,
    /// Shared with [`AuditLog::expect`].
    in_flight: Arc<AtomicUsize>,
}

/// Writes failing: when, how many calls were refused for it, and the first error.
struct Outage {
    since: String,
    refused: u64,
    error: String,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        yield_on_wakeup();
        let mut lazy: Vec<AuditEvent> = Vec::new();
        let mut lazy_since = Instant::now();
        loop {
            let first = match self.next_timeout(!lazy.is_empty(), lazy_since) {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(t) => rx.recv_timeout(t),
            };
            let mut group = Vec::new();
            let mut controls = Vec::new();
            let mut close = None;
            let had_lazy = !lazy.is_empty();
            match first {
                Ok(Msg::Close(reply)) => close = Some(reply),
                Ok(m) => sort(self.taken(m), &mut group, &mut lazy, &mut controls),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.flush(Vec::new(), std::mem::take(&mut lazy));
                    self.sync_file();
                    return;
                }
            }
            let mut drain = |close: &mut Option<_>, group: &mut Vec<_>, lazy: &mut Vec<_>| {
                while close.is_none() && group.len() + lazy.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Msg::Close(reply)) => *close = Some(reply),
                        Ok(m) => sort(self.taken(m), group, lazy, &mut controls),
                        Err(_) => break,
                    }
                }
            };
            drain(&mut close, &mut group, &mut lazy);
            if !group.is_empty() && close.is_none() && self.in_flight.load(Ordering::Relaxed) > 0 {
                std::thread::sleep(COMMIT_DELAY);
                drain(&mut close, &mut group, &mut lazy);
            }
            if let Some(reply) = close {
                self.flush(group, std::mem::take(&mut lazy));
                if self.unsigned > 0 {
                    self.checkpoint();
                }
                // Sealed: durable in the log itself, not only in the write-ahead file.
                self.sync_file();
                let head = self.state.clone();
                drop(self);
                let _ = reply.send(Ok(head));
                return;
            }
            if !had_lazy && !lazy.is_empty() {
                lazy_since = Instant::now();
            }
            let lazy_due = lazy_since.elapsed() >= LAZY_WAIT || lazy.len() >= MAX_GROUP;
            if !group.is_empty() || !controls.is_empty() || lazy_due {
                self.flush(group, std::mem::take(&mut lazy));
            }
            self.maybe_checkpoint();
            for reply in controls {
                if self.unsigned > 0 {
                    self.checkpoint();
                }
                let _ = reply.send(Ok(self.state.clone()));
            }
        }
    }

    /// Counts a message as taken off the queue (the queue-depth gauge).
    fn taken(&self, m: Msg) -> Msg {
        if matches!(m, Msg::Event(..)) {
            self.metrics.audit_queue.dec();
        }
        m
    }

    /// How long to wait for the next message: until held lazy records are due, or the
    /// next timed checkpoint; `None` = no deadline.
    fn next_timeout(&self, lazy: bool, lazy_since: Instant) -> Option<Duration> {
        let mut t = None;
        if lazy {
            t = Some(LAZY_WAIT.saturating_sub(lazy_since.elapsed()));
        }
        if self.unsigned > 0 && self.signer.is_some() {
            let cp = self
                .cfg
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint.elapsed());
            t = Some(t.map_or(cp, |x: Duration| x.min(cp)));
        }
        t
    }

    /// Writes waiting events and held lazy ones under one fsync, and answers.
    fn flush(&mut self, group: Vec<(AuditEvent, Reply)>, lazy: Vec<AuditEvent>) {
        if group.is_empty() && lazy.is_empty() {
            return;
        }
        let (events, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let n = events.len();
        // After an outage the first group starts with a record of it, so the log says
        // how many calls were refused for want of storage, and since when.
        let outage = self.outage.as_ref().map(|o| self.outage_event(o));
        let skip = usize::from(outage.is_some());
        let lazy_n = lazy.len() as u64;
        let all = outage.into_iter().chain(events).chain(lazy).collect();
        let written = self.write(all);
        match &written {
            Ok(_) if skip > 0 => {
                self.outage = None;
                self.writable.send_replace(true);
                tracing::info!("audit log writable again; the outage is recorded");
            }
            Ok(_) => {}
            Err(e) => {
                let since = rfc3339(self.clock.now_utc());
                let o = self.outage.get_or_insert_with(|| Outage {
                    since,
                    refused: 0,
                    error: e.to_string(),
                });
                o.refused += n as u64 + lazy_n;
                self.writable.send_replace(false);
            }
        }
        if written.is_ok()
            && self.cfg.max_file_bytes > 0
            && self.file_len >= self.cfg.max_file_bytes
        {
            self.rotate();
        }
        match written {
            Ok(seqs) => {
                for (reply, seq) in replies.into_iter().zip(seqs.into_iter().skip(skip).take(n)) {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The record that closes an outage.
    fn outage_event(&self, o: &Outage) -> AuditEvent {
        AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: crate::domain::SYSTEM_PRINCIPAL.into(),
            method: OUTAGE_METHOD.into(),
            outcome: Some(Outcome::Ok),
            status: "OK".into(),
            reason: "AUDIT_STORAGE_RECOVERED".into(),
            note: format!(
                "audit writes failed from {} until this record: {} call(s) refused \
                 UNAVAILABLE/AUDIT_UNAVAILABLE, none answered; first error: {}",
                o.since, o.refused, o.error
            ),
            ..Default::default()
        }
    }

    /// Numbers, chains and writes events with one fsync; returns their numbers. Never
    /// rotates (`flush` does, after a group; rotation itself writes a checkpoint).
    fn write(&mut self, events: Vec<AuditEvent>) -> Result<Vec<u64>, AuditError> {
        let mut state = self.state.clone();
        let mut buf = Vec::with_capacity(events.len() * 512);
        let mut seqs = Vec::with_capacity(events.len());
        let mut forwards = Vec::new();
        for ev in events {
            let seq = state.sequence + 1;
            let (record, line) = AuditRecord::with_line(
                ev,
                seq,
                rfc3339(self.clock.now_utc()),
                state.hash.clone(),
                &self.cfg.node,
            );
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            if self.forward.is_some() {
                forwards.push((record.time.clone(), seq, record.hash.clone(), line));
            }
            state = ChainHead {
                sequence: seq,
                hash: record.hash,
            };
            seqs.push(seq);
        }
        let started = Instant::now();
        let wal = self.wal.as_mut().filter(|w| buf.len() as u64 <= w.size());
        let written = write_durably(&mut self.file, wal, self.file_len, &buf);
        if written.is_err() {
            self.abandon_wal();
        }
        let n = if written.is_ok() { seqs.len() } else { 0 };
        self.metrics.audit_write(started.elapsed(), n);
        written?;
        if let Some(f) = &self.forward {
            for (time, seq, hash, line) in forwards {
                f.send(&time, seq, &hash, &line);
            }
        }
        self.file_len += buf.len() as u64;
        self.unsigned += seqs.len() as u64;
        self.state = state.clone();
        *self.head.lock().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(seqs)
    }

    fn maybe_checkpoint(&mut self) {
        let due = self.unsigned >= self.cfg.checkpoint_every
            || (self.unsigned > 0
                && self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval);
        if due {
            self.checkpoint();
        }
    }

    /// Appends a signed checkpoint of the current head. A signing failure is logged and
    /// retried at the next occasion; it never fails a call.
    fn checkpoint(&mut self) {
        let Some(signer) = self.signer.clone() else {
            return;
        };
        self.last_checkpoint = Instant::now();
        let ev = match checkpoint::event(signer.as_ref(), &self.state) {
            Ok(ev) => ev,
            Err(e) => {
                return tracing::error!(error = %e, "audit checkpoint not signed; retried later");
            }
        };
        match self.write(vec![ev]) {
            // The checkpoint record itself is covered by the next checkpoint's hash
            // chain, but needs no checkpoint of its own.
            Ok(_) => {
                self.unsigned = 0;
                let now = self.clock.now_utc();
                self.metrics.audit_checkpoint(now.unix_timestamp() as f64);
            }
            Err(e) => tracing::error!(error = %e, "audit checkpoint not written; retried later"),
        }
    }

    /// Syncs the log file itself when its records are only durable in the write-ahead
    /// file; false if that failed (logged, not fatal: the write-ahead file still holds
    /// them, and is never written again, see [`abandon_wal`](Self::abandon_wal)).
    fn sync_file(&mut self) -> bool {
        if self.wal.is_some()
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!(error = %e, "audit log not synced; its write-ahead file holds the records");
            self.abandon_wal();
            return false;
        }
        true
    }

    /// After any failed write or sync, groups go back to syncing the log itself for the
    /// rest of the process. A failed sync may have left the log's pages marked clean
    /// but not on disk (Linux reports a writeback error once), so the write-ahead file,
    /// which holds every record since the log's last good sync, must not be overwritten;
    /// and a group refused after its bytes reached the log must not stay there while a
    /// retry is only in the write-ahead file.
    fn abandon_wal(&mut self) {
        if self.wal.take().is_some() {
            tracing::error!(file = %wal::path_for(&self.path).display(),
                "audit write-ahead file set aside after a failed write; every group now \
                 syncs the log itself until restart");
        }
    }

    /// Seals the current file with a checkpoint and renames it
    /// `audit.log.<first seq>`; the chain goes on in a new current file.
    fn rotate(&mut self) {
        if self.unsigned > 0 {
            self.checkpoint();
        }
        let target = files::rotated_name(&self.path, self.file_first_seq);
        // A rotated file is never read back from the write-ahead file: sync it first.
        if !self.sync_file() {
            return tracing::error!("audit log rotation put off");
        }
        let result = std::fs::rename(&self.path, &target)
            .map_err(|e| AuditError::Io(format!("rename to {}: {e}", target.display())))
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| AuditError::Io(format!("{}: {e}", self.path.display())))
            })
            .and_then(|f| open::sync_dir(&self.path).map(|()| f));
        match result {
            Ok(f) => {
                tracing::info!(rotated_to = %target.display(), "audit log rotated");
                self.file = f;
                self.file_first_seq = self.state.sequence + 1;
                self.file_len = 0;
            }
            Err(e) => tracing::error!(error = %e, "audit log rotation failed; writing on"),
        }
    }
}

/// Puts the calling thread in `SCHED_BATCH`: the same share of the CPU as any other
/// thread (nice 0, so it cannot starve, unlike `SCHED_IDLE`), but when it wakes it does
/// not preempt the thread running on its CPU; it runs when that thread sleeps or at the
/// scheduler's next tick. On a core shared with a busy async worker this turns a
/// wake-up per record into a group per burst of calls. Measured with `hsmd-bench --pin`
/// (README, Performance): ECDSA c8 47 us less CPU per call, SignStream 28 us, AES 16 us.
/// Where the policy cannot be set the writer runs as a normal thread.
fn yield_on_wakeup() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
    // calling thread, and SCHED_BATCH takes priority 0.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "audit writer stays a normal thread (SCHED_BATCH refused)"
        );
    }
}

/// Files a message under the right list.
fn sort(
    m: Msg,
    group: &mut Vec<(AuditEvent, Reply)>,
    lazy: &mut Vec<AuditEvent>,
    controls: &mut Vec<oneshot::Sender<Result<ChainHead, AuditError>>>,
) {
    match m {
        Msg::Event(ev, Some(reply)) => group.push((*ev, reply)),
        Msg::Event(ev, None) => lazy.push(*ev),
        Msg::Checkpoint(reply) => controls.push(reply),
        // Taken out by the caller before sorting.
        Msg::Close(reply) => {
            let _ = reply.send(Err(AuditError::Io("audit writer closing".into())));
        }
    }
}

/// Appends `buf` to a file of `len` bytes and makes it durable: in the write-ahead file
/// when there is one (syncing the file first if the write-ahead file must wrap to its
/// start), else by syncing the file. On failure cuts the file back to `len`.
fn write_durably(
    file: &mut File,
    wal: Option<&mut Wal>,
    len: u64,
    buf: &[u8],
) -> Result<(), AuditError> {
    let result = file.write_all(buf).and_then(|()| match wal {
        Some(wal) => {
            if !wal.fits(buf.len()) {
                file.sync_data()?;
                wal.wrap();
            }
            wal.write(buf)
        }
        None => file.sync_data(),
    });
    result.map_err(|e| {
        tracing::error!(error = %e, "audit log write failed; calls fail UNAVAILABLE");
        // Cut a partial write back so the chain on disk stays whole; the group may have
        // reached the disk (a sync at the wrap), so the cut must too, or a power cut
        // could bring refused records back.
        let _ = file.set_len(len).and_then(|()| file.sync_data());
        AuditError::Io(format!("audit write: {e}"))
    })
}

#[cfg(test)]
mod tests;
