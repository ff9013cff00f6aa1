//! Audit forwarding to a real syslog receiver: Debian's rsyslogd, started by the test
//! with a private configuration, receiving on a loopback TCP port and writing to a
//! file. Every record hsmd writes arrives with its sequence number and hash as
//! structured data and its log line, byte for byte, as the message; with the receiver
//! stopped calls still succeed; once it is back, `hsmctl audit export --since SEQ`
//! fills the gap. The same daemon serves metrics with `per_principal = true` and a rate
//! limit, to see the forwarding counters and a labelled refusal. One receiver and one
//! daemon for the binary, the steps in one test.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    configured::with_admin_policy,
    ops::{Rsyslog, forwarded_seqs, http_get, promtool_check, require_ops_tools},
    tools::free_port,
};

/// How long forwarded records may take to reach the file (the forwarder's backoff is
/// at most 5 s after the receiver comes back).
const ARRIVAL: Duration = Duration::from_secs(30);

/// Waits until every sequence number in `want` is in the receiver's file; panics with
/// the missing ones after [`ARRIVAL`].
fn wait_for(r: &Rsyslog, want: &BTreeSet<u64>) {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let got = forwarded_seqs(&r.received());
        let missing: Vec<_> = want.difference(&got).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "syslog file lacks records {missing:?}\n---- received:\n{}",
            r.received()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn seqs_after(d: &Daemon, base: u64) -> BTreeSet<u64> {
    d.audit_lines()
        .iter()
        .map(|l| l.seq())
        .filter(|s| *s > base)
        .collect()
}

fn sign(d: &Daemon, key: &str) {
    d.hsmctl_ok([
        "sign",
        key,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        "msg.txt",
        "--out",
        "msg.sig",
    ]);
}

#[tokio::test]
async fn every_record_reaches_rsyslog_and_export_fills_an_outage() {
    require_ops_tools();
    let syslog_dir = tempfile::Builder::new()
        .prefix("hsmd-rsyslog-")
        .tempdir()
        .expect("temp dir");
    let mut rsyslog = Rsyslog::start(syslog_dir.path());
    let metrics = format!("127.0.0.1:{}", free_port());
    let extra = format!(
        "[audit.forward]\nsyslog = \"{}\"\n[metrics]\nlisten = \"{metrics}\"\nper_principal = true\n\
         [rate_limits]\nrandom = \"1/h burst 1\"\n",
        rsyslog.url()
    );
    let (d, _config) = Daemon::start_configured(&with_admin_policy(&extra)).await;
    // The provisioning run of `hsmd dev` did not forward; this run forwards from here.
    let base = d.audit_lines().last().map_or(0, |l| l.seq());

    std::fs::write(d.scratch().join("msg.txt"), "forward me").expect("message");
    let key = d.hsmctl_ok([
        "key",
        "create",
        "--spec",
        "EC_P256",
        "--usage",
        "sign-verify",
    ]);
    sign(&d, &key);
    assert!(!d.hsmctl(["key", "describe", "alias/absent"]).success());
    let first = seqs_after(&d, base);
    assert!(first.len() >= 3, "{first:?}");
    wait_for(&rsyslog, &first);

    // The message is the record's line exactly as written, with seq and hash as SD.
    let received = rsyslog.received();
    for line in d.audit_lines().iter().filter(|l| l.seq() > base) {
        let sd = format!(
            "[hsmd@32473 seq=\"{}\" hash=\"{}\"] ",
            line.seq(),
            line.str("hash")
        );
        let want = format!("{sd}{}", line.raw);
        assert!(
            received
                .lines()
                .any(|m| m.ends_with(&want) && m.starts_with("<110>1 ")),
            "no RFC 5424 message carrying record {} as written\n---- received:\n{received}",
            line.seq()
        );
    }

    // Receiver down: calls still succeed, and quickly.
    rsyslog.stop();
    let gap_start = d.audit_lines().last().map_or(0, |l| l.seq()) + 1;
    for _ in 0..5 {
        let t = Instant::now();
        sign(&d, &key);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a call waited for the syslog receiver: {:?}",
            t.elapsed()
        );
    }
    let gap_end = d.audit_lines().last().map_or(0, |l| l.seq());
    assert!(gap_end >= gap_start + 4);

    // Back up: export fills the gap; later records flow again on their own.
    rsyslog.restart();
    let out = d.hsmctl_ok([
        "audit",
        "export",
        "--since",
        &gap_start.to_string(),
        "--syslog",
        &rsyslog.url(),
    ]);
    let exported: u64 = out
        .strip_prefix("exported ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("export summary: {out}"));
    assert!(exported > gap_end - gap_start, "{out}");
    sign(&d, &key);
    let all = seqs_after(&d, base);
    wait_for(&rsyslog, &all);

    // Exported messages are the very messages the daemon sends.
    let received = rsyslog.received();
    for line in d
        .audit_lines()
        .iter()
        .filter(|l| l.seq() >= gap_start && l.seq() <= gap_end)
    {
        let want = format!(
            "seq=\"{}\" hash=\"{}\"] {}",
            line.seq(),
            line.str("hash"),
            line.raw
        );
        assert!(
            received.lines().any(|m| m.ends_with(&want)),
            "record {} not filled in as written",
            line.seq()
        );
    }
    // The counters of all this, per principal where asked for.
    d.hsmctl_ok(["random", "8"]);
    let throttled = d.hsmctl(["--max-retries", "0", "random", "8"]);
    assert!(
        !throttled.success(),
        "the second GenerateRandom is over the limit"
    );
    let (status, text) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    let check = promtool_check(&text);
    assert!(check.success(), "{}\n{text}", check.describe());
    let limited =
        format!("hsmd_rate_limited_total{{class=\"random\",principal=\"{ADMIN_PRINCIPAL}\"}} 1");
    assert!(text.contains(&limited), "{limited}\n{text}");
    assert!(
        text.contains(&format!(
            "outcome=\"throttled\",principal=\"{ADMIN_PRINCIPAL}\"}} 1"
        )),
        "{text}"
    );
    let forwarded: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hsmd_audit_forwarded_total "))
        .and_then(|v| v.parse().ok())
        .expect("hsmd_audit_forwarded_total");
    assert!(forwarded >= first.len() as f64, "{text}");

    let bad = d.hsmctl([
        "audit",
        "export",
        "--since",
        "1",
        "--syslog",
        "udp://127.0.0.1:1",
    ]);
    assert!(!bad.success());
    assert!(bad.stderr.contains("tcp://HOST:PORT"), "{}", bad.describe());
}
