//! The writer: group commit, reopen, write failures, torn-line recovery, checkpoints
//! and rotation, checked with the offline verifier.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use audit_chain::{Verifier, files};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

use super::*;
use crate::audit::record::{Outcome, TORN_LINE_METHOD};
use crate::audit::wal;

struct SoftSigner(SigningKey);

impl CheckpointSigner for SoftSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let sig: Signature = self.0.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

fn signer() -> (Arc<dyn CheckpointSigner>, Verifier) {
    let key = SigningKey::from_bytes(&[3u8; 32].into()).unwrap();
    let v = Verifier::with_key(*key.verifying_key());
    (Arc::new(SoftSigner(key)), v)
}

fn event(m: &str) -> AuditEvent {
    AuditEvent {
        method: m.into(),
        outcome: Some(Outcome::Ok),
        ..Default::default()
    }
}

fn cfg(dir: &Path) -> AuditConfig {
    AuditConfig {
        max_file_bytes: 0,
        ..AuditConfig::at(dir.join("audit.log"))
    }
}

/// A writer of a new, empty chain on `file` (at `path`), without checkpoints.
fn writer_on(file: std::fs::File, wal: Option<Wal>, path: &Path) -> Writer {
    Writer {
        file,
        wal,
        path: path.to_path_buf(),
        cfg: AuditConfig::at(path.to_path_buf()),
        head: Arc::new(Mutex::new(ChainHead::default())),
        state: ChainHead::default(),
        signer: None,
        clock: crate::clock::SystemClock::shared(),
        unsigned: 0,
        last_checkpoint: Instant::now(),
        file_first_seq: 1,
        file_len: 0,
        metrics: Default::default(),
        forward: None,
        outage: None,
        writable: tokio::sync::watch::Sender::new(true),
        in_flight: Default::default(),
    }
}

fn verify(v: &Verifier, path: &Path) -> audit_chain::ChainReport {
    v.verify_files(&files::log_files(path).unwrap()).unwrap()
}

#[tokio::test]
async fn concurrent_appends_chain_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
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
    let report = verify(&Verifier::default(), &c.path);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 50);
    assert_eq!(report.head, log.head());
    drop(log);
    let again = AuditLog::open(&c, None).unwrap();
    assert_eq!(again.append(event("after")).await.unwrap(), 51);
}

#[tokio::test]
async fn unwritable_log_fails_the_call() {
    // /dev/full fails every write with ENOSPC, like a full disk.
    let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
    let log = AuditLog::spawn(writer_on(full, None, Path::new("/dev/full"))).unwrap();
    let writable = log.writable();
    assert!(*writable.borrow());
    assert!(matches!(
        log.append(event("x")).await,
        Err(AuditError::Io(_))
    ));
    // The server turns health NOT_SERVING on this.
    assert!(
        !*writable.borrow(),
        "a failed write leaves the log marked writable"
    );
    // Nothing was made durable, so the head did not move.
    assert_eq!(log.head(), ChainHead::default());
}

#[tokio::test]
async fn torn_tail_is_moved_aside_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
    log.append(event("a")).await.unwrap();
    drop(log);
    let mut f = OpenOptions::new().append(true).open(&c.path).unwrap();
    f.write_all(b"{\"seq\":2,\"ti").unwrap();
    drop(f);
    let log = AuditLog::open(&c, None).unwrap();
    let text = std::fs::read_to_string(&c.path).unwrap();
    let last: AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!((last.seq, last.method.as_str()), (2, TORN_LINE_METHOD));
    assert_eq!(last.reason, "TORN_LINE_REMOVED");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.log.torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(last.note.contains(&aside[0]), "{}", last.note);
    assert_eq!(
        std::fs::read(dir.path().join(&aside[0])).unwrap(),
        b"{\"seq\":2,\"ti"
    );
    assert_eq!(log.append(event("b")).await.unwrap(), 3);
    assert!(verify(&Verifier::default(), &c.path).ok());
}

#[test]
fn broken_chain_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    std::fs::write(&c.path, b"{\"seq\":1,\"ti\n").unwrap();
    let err = AuditLog::open(&c, None).err().expect("refused");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[tokio::test]
async fn checkpoints_by_count_and_on_demand_verify() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_every: 5,
        ..cfg(dir.path())
    };
    let (s, v) = signer();
    let log = AuditLog::open(&c, Some(s)).unwrap();
    for i in 0..12 {
        log.append(event(&format!("m{i}"))).await.unwrap();
    }
    let head = log.checkpoint().await.unwrap();
    let r = verify(&v.clone().sealed(true), &c.path);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.checkpoints_verified, 3);
    let v = v.clone();
    assert_eq!(r.head, head);
    // A second on-demand checkpoint with nothing new adds nothing.
    assert_eq!(log.checkpoint().await.unwrap(), head);
    log.append(event("last")).await.unwrap();
    let sealed = log.close().await.unwrap();
    assert_eq!(
        sealed.sequence,
        head.sequence + 2,
        "the call and its checkpoint"
    );
    assert!(log.append(event("late")).await.is_err(), "closed");
    assert!(verify(&v.sealed(true), &c.path).ok());
}

#[tokio::test]
async fn rotation_keeps_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        max_file_bytes: 2000,
        ..cfg(dir.path())
    };
    let (s, v) = signer();
    let log = AuditLog::open(&c, Some(s.clone())).unwrap();
    for i in 0..40 {
        log.append(event(&format!("m{i}"))).await.unwrap();
    }
    drop(log);
    let log = AuditLog::open(&c, Some(s)).unwrap();
    log.append(event("after-reopen")).await.unwrap();
    log.checkpoint().await.unwrap();
    let files = files::log_files(&c.path).unwrap();
    assert!(files.len() > 3, "{files:?}");
    let r = verify(&v.sealed(true), &c.path);
    assert!(r.ok(), "{:?}", r.problems);
    assert!(r.records > 41);
}

#[tokio::test]
async fn lazy_records_share_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
    for i in 0..20 {
        log.append_lazy(event(&format!("t{i}"))).unwrap();
    }
    std::thread::sleep(LAZY_WAIT * 4);
    assert_eq!(log.append(event("durable")).await.unwrap(), 21);
}

#[tokio::test]
async fn a_call_in_flight_delays_a_group_but_never_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
    // A call that has begun and never hands its record over: groups wait for it
    // (COMMIT_DELAY) and are then written anyway.
    let stuck = log.expect();
    for i in 1..=3 {
        let seq = log.append(event(&format!("m{i}"))).await.unwrap();
        assert_eq!(seq, i);
        // Answered only once on disk: the record is in the file when append returns.
        let text = std::fs::read_to_string(&c.path).unwrap();
        assert!(text.contains(&format!("\"method\":\"m{i}\"")), "{text}");
    }
    drop(stuck);
    assert_eq!(log.in_flight.load(Ordering::Relaxed), 0);
    let also = log.expect();
    let other = log.expect();
    assert_eq!(log.in_flight.load(Ordering::Relaxed), 2);
    drop((also, other));
    assert_eq!(log.in_flight.load(Ordering::Relaxed), 0);
    assert!(verify(&Verifier::default(), &c.path).ok());
}

#[tokio::test]
async fn the_writer_thread_does_not_preempt_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&cfg(dir.path()), None).unwrap();
    // Once a record is durable the thread has set its policy.
    log.append(event("m")).await.unwrap();
    let mut writers = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        // Threads of other tests may end while this looks at them.
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() != "audit-writer" {
            continue;
        }
        let tid: libc::pid_t = task.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: sched_getscheduler only reads the policy of thread `tid`.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy < 0 {
            continue;
        }
        assert_eq!(policy, libc::SCHED_BATCH, "audit writer thread {tid}");
        writers += 1;
    }
    assert!(writers >= 1, "no audit-writer thread found");
}

/// Cuts the log at `path` back to its first `keep` lines, plus `extra` bytes of the next
/// one: what a crash that lost the page cache (not the process) leaves of it.
fn lose_tail(path: &Path, keep: usize, extra: usize) {
    let text = std::fs::read(path).unwrap();
    let mut at = 0;
    for _ in 0..keep {
        at += text[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    }
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_len((at + extra) as u64).unwrap();
}

fn methods(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().method)
        .collect()
}

#[tokio::test]
async fn records_lost_from_the_log_come_back_from_the_write_ahead_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
    for i in 0..10 {
        log.append(event(&format!("m{i}"))).await.unwrap();
    }
    let head = log.head();
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    assert!(wal::path_for(&c.path).exists(), "the write-ahead file");

    lose_tail(&c.path, 7, 0);
    let log = AuditLog::open(&c, None).unwrap();
    assert_eq!(log.head(), head, "the three lost records are back");
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(methods(&c.path), want);
    assert_eq!(log.append(event("after")).await.unwrap(), 11);
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    assert!(verify(&Verifier::default(), &c.path).ok());

    // A lost tail that ends mid-line: the torn bytes are moved aside (and recorded),
    // then the whole records come back after them.
    lose_tail(&c.path, 9, 25);
    let log = AuditLog::open(&c, None).unwrap();
    let got = methods(&c.path);
    assert_eq!(
        got[..11],
        [&want[..], &["after".to_string()][..]].concat()[..]
    );
    assert_eq!(got[11], TORN_LINE_METHOD, "{got:?}");
    assert_eq!(log.head().sequence, 12);
    assert!(verify(&Verifier::default(), &c.path).ok());
}

#[tokio::test]
async fn the_write_ahead_file_wraps_in_place_and_still_restores_the_latest_records() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        wal_bytes: 4096,
        ..cfg(dir.path())
    };
    let log = AuditLog::open(&c, None).unwrap();
    // About 300 bytes each: the write-ahead file wraps every dozen or so.
    for i in 0..100 {
        log.append(event(&format!("m{i}"))).await.unwrap();
    }
    let head = log.head();
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    let wal = std::fs::metadata(wal::path_for(&c.path)).unwrap();
    assert_eq!(wal.len(), 4096, "the write-ahead file never grows");

    // The last records of the latest round come back; older ones were synced in the
    // log before the round began, so none is missing.
    lose_tail(&c.path, 98, 0);
    let log = AuditLog::open(&c, None).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(methods(&c.path).len(), 100);
    assert!(verify(&Verifier::default(), &c.path).ok());
}

#[tokio::test]
async fn without_a_write_ahead_file_each_group_syncs_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        wal_bytes: 0,
        ..cfg(dir.path())
    };
    let log = AuditLog::open(&c, None).unwrap();
    for i in 0..5 {
        log.append(event(&format!("m{i}"))).await.unwrap();
    }
    assert!(!wal::path_for(&c.path).exists());
    assert_eq!(methods(&c.path).len(), 5);
}

#[tokio::test]
async fn a_new_chain_never_takes_records_from_a_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(&c, None).unwrap();
    for i in 0..5 {
        log.append(event(&format!("old{i}"))).await.unwrap();
    }
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    // `rm audit/*` leaves the hidden write-ahead file behind.
    std::fs::remove_file(&c.path).unwrap();
    let log = AuditLog::open(&c, None).unwrap();
    assert_eq!(log.head(), ChainHead::default(), "a new chain starts empty");
    assert_eq!(log.append(event("new")).await.unwrap(), 1);
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    // Even with the new file lost (as a power cut could), nothing of the old chain
    // comes back: the write-ahead file was zeroed when the new chain began.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&c.path)
        .unwrap()
        .set_len(0)
        .unwrap();
    AuditLog::open(&c, None).unwrap();
    assert_eq!(methods(&c.path), ["new"]);
}

#[tokio::test]
async fn a_failed_write_ahead_cuts_the_group_and_falls_back_to_syncing_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    // /dev/full fails every write with ENOSPC.
    let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let wal = Some(Wal::on(full, 1 << 20));
    let log = AuditLog::spawn(writer_on(file, wal, &path)).unwrap();
    assert!(matches!(
        log.append(event("refused")).await,
        Err(AuditError::Io(_))
    ));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the refused group is cut from the log"
    );
    // The next group syncs the log itself; it starts with the record of the outage,
    // numbered where the refused record was.
    assert_eq!(log.append(event("next")).await.unwrap(), 2);
    assert_eq!(methods(&path), [OUTAGE_METHOD, "next"]);
    assert!(verify(&Verifier::default(), &path).ok());
}
