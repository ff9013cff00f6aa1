//! Audit forwarding: every record, once durable in the log, is also sent to a syslog
//! receiver (`[audit.forward] syslog`). The log file stays the source of truth, so
//! forwarding never blocks or fails a call: the writer hands each message to a bounded
//! queue without waiting, a thread of its own sends them and reconnects with
//! exponential backoff, and a message that finds the queue full is dropped and counted
//! (`hsmd_audit_forward_dropped_total`); `hsmctl audit export --since SEQ` resends a
//! range after an outage.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use audit_chain::syslog::{self, Connection, Target};

use crate::metrics::Metrics;

/// Messages held while the receiver is slow or away; past this they are dropped.
const QUEUE: usize = 10_000;
/// First wait after a failed connect or send; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connect and write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands messages to the forwarding thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Forwarder {
    tx: SyncSender<String>,
    host: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Starts the forwarding thread for `target`. It connects on the first message.
    pub(crate) fn start(target: Target, metrics: Arc<Metrics>) -> std::io::Result<Forwarder> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("audit-forward".into())
            .spawn(move || run(target, rx, m))?;
        Ok(Forwarder {
            tx,
            host: syslog::hostname().into(),
            metrics,
        })
    }

    /// Queues the message of one durable record; never waits.
    pub(crate) fn send(&self, time: &str, seq: u64, hash: &str, line: &str) {
        let msg = syslog::message(&self.host, time, seq, hash, line);
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.forward_dropped.inc();
            }
        }
    }
}

/// Sends of one message, each after a fresh connection, before it is dropped.
const MAX_SEND_ATTEMPTS: u32 = 5;

/// The thread: sends each message in order, holding it (and so filling the queue)
/// while the receiver is away, with backoff between attempts. Ends when the writer is
/// gone and the queue is empty.
fn run(target: Target, rx: Receiver<String>, metrics: Arc<Metrics>) {
    let mut conn: Option<Connection> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut logged_down = false;
    while let Ok(msg) = rx.recv() {
        // Send failures of this message once connected: a message the receiver keeps
        // refusing (too large for a datagram socket...) is dropped and counted after
        // MAX_SEND_ATTEMPTS instead of holding back every later record.
        let mut failed_sends = 0;
        loop {
            if conn.is_none() {
                match Connection::open(&target, IO_TIMEOUT) {
                    Ok(c) => {
                        tracing::info!(%target, "audit forwarding connected");
                        metrics.forward_connected.set(1);
                        conn = Some(c);
                        logged_down = false;
                    }
                    Err(e) => {
                        if !logged_down {
                            tracing::warn!(%target, error = %e, "audit forwarding: receiver unreachable; retrying with backoff (the log file keeps every record)");
                            logged_down = true;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.send(&msg) {
                Ok(()) => {
                    metrics.forward_sent.inc();
                    backoff = FIRST_BACKOFF;
                    break;
                }
                Err(e) => {
                    failed_sends += 1;
                    if failed_sends >= MAX_SEND_ATTEMPTS {
                        tracing::error!(%target, error = %e, "audit forwarding: a record failed {MAX_SEND_ATTEMPTS} times and is dropped (hsmctl audit export resends it)");
                        metrics.forward_dropped.inc();
                        break;
                    }
                    tracing::warn!(%target, error = %e, "audit forwarding: send failed; reconnecting");
                    metrics.forward_connected.set(0);
                    conn = None;
                    logged_down = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sends_octet_counted_messages_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Tcp(listener.local_addr().unwrap().to_string());
        let metrics = Arc::new(Metrics::default());
        let f = Forwarder::start(target, metrics.clone()).unwrap();
        f.send("2026-01-01T00:00:00.000000Z", 1, "aa", "{\"seq\":1}");
        f.send("2026-01-01T00:00:01.000000Z", 2, "bb", "{\"seq\":2}");
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 1024];
        while got.matches("hsmd@32473").count() < 2 {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early: {got}");
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        let first = syslog::message(
            &syslog::hostname(),
            "2026-01-01T00:00:00.000000Z",
            1,
            "aa",
            "{\"seq\":1}",
        );
        assert!(
            got.starts_with(&format!("{} {first}", first.len())),
            "{got}"
        );
        assert!(
            got.ends_with("[hsmd@32473 seq=\"2\" hash=\"bb\"] {\"seq\":2}"),
            "{got}"
        );
        assert_eq!(metrics.forward_dropped.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // Nobody listens: the thread holds one message in backoff, the queue fills.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::default());
        let f =
            Forwarder::start(Target::Tcp(format!("127.0.0.1:{port}")), metrics.clone()).unwrap();
        let started = std::time::Instant::now();
        for seq in 0..(QUEUE as u64 + 50) {
            f.send("-", seq, "00", "{}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "send never waits"
        );
        let dropped = metrics.forward_dropped.get();
        assert!((49..=50).contains(&dropped), "dropped {dropped}");
    }
}
