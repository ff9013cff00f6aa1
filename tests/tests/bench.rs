//! The benchmark runs end to end (a few calls, not a timed assertion): `hsmd-bench`
//! provisions a token, runs the raw baseline and the daemon, and prints a well-formed
//! JSON report; `hsmctl bench` drives a running daemon.

use std::process::Command;

use hsmd_e2e::tools::run_unchecked;
use hsmd_e2e::tools::workspace_bin;
use hsmd_e2e::{Daemon, require_tools, run};

#[test]
fn hsmd_bench_reports_raw_and_hsmd() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(workspace_bin("hsmd-bench"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "--spec",
            "EC_P256",
            "--algorithm",
            "ECDSA_SHA_256",
            "--concurrency",
            "2",
        ])
        .args([
            "--calls",
            "40",
            "--warmup",
            "0s",
            "--extra-keys",
            "3",
            "--rounds",
            "3",
            "--floor",
            "-o",
            "json",
        ]));
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    for side in ["raw", "hsmd"] {
        let s = &report[side];
        assert_eq!(s["calls"], 40, "{side}: {report}");
        assert_eq!(s["errors"], 0, "{side}: {report}");
        for f in ["ops_per_sec", "p50_ms", "p99_ms"] {
            assert!(
                s[f].as_f64().is_some_and(|v| v > 0.0),
                "{side}.{f}: {report}"
            );
        }
    }
    assert!(
        report["ratio"].as_f64().is_some_and(|r| r > 0.0),
        "{report}"
    );
    assert!(
        report["hsmd_peak_rss_kib"]
            .as_u64()
            .is_some_and(|r| r > 1000),
        "{report}"
    );
    assert_eq!(report["extra_keys"], 3);
    // Pinned by default on a machine with 2 or more CPUs: the load generator alone on
    // the last one, and each side's CPU per call from the kernel.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(report["pin"], cpus >= 2, "{report}");
    if cpus >= 2 {
        assert_eq!(
            report["client_cpus"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        let work = report["work_cpus"].as_array().expect("work_cpus");
        assert!(
            !work.is_empty() && !work.contains(&report["client_cpus"][0]),
            "{report}"
        );
    }
    assert!(
        report["raw"]["cpu_us_per_call"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "raw CPU per call (thread CPU clock): {report}"
    );
    assert!(
        report["hsmd"]["cpu_us_per_call"]
            .as_f64()
            .is_some_and(|v| v >= 0.0),
        "{report}"
    );
    let overhead = report["overhead_us_per_call"]
        .as_f64()
        .expect("overhead_us_per_call");
    let (h, r) = (
        report["hsmd"]["cpu_us_per_call"].as_f64().unwrap(),
        report["raw"]["cpu_us_per_call"].as_f64().unwrap(),
    );
    assert!((overhead - (h - r)).abs() < 1e-6, "{report}");
    // --floor: health checks on the same daemon, the transport's own CPU per call.
    let floor = &report["floor"];
    assert_eq!(floor["method"], "grpc.health.v1.Health/Check", "{report}");
    assert_eq!(floor["errors"], 0, "{report}");
    assert!(
        floor["ops_per_sec"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    let f = floor["cpu_us_per_call"].as_f64().expect("floor cpu");
    let above = report["overhead_above_floor_us_per_call"]
        .as_f64()
        .expect("above floor");
    assert!((above - (overhead - f)).abs() < 1e-6, "{report}");
    // ... and durable writes on their own, shared by the records of hsmd's audit groups
    // (every call's record and the checkpoints, counted from its /metrics).
    let disk = &report["disk_floor"];
    assert_eq!(disk["syncs"], 3000, "1000 per round: {report}");
    assert!(
        disk["cpu_us_per_sync"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    assert!(
        disk["hsmd_syncs"].as_f64().is_some_and(|v| v >= 1.0),
        "{report}"
    );
    let per_sync = disk["hsmd_records_per_sync"].as_f64().expect("records");
    assert!(
        (1.0..=2.0 * 40.0).contains(&per_sync),
        "at least one record per sync, at most the calls: {report}"
    );
    let d = disk["cpu_us_per_call"].as_f64().expect("disk per call");
    assert!(
        (d - disk["cpu_us_per_sync"].as_f64().unwrap() / per_sync).abs() < 1e-6,
        "{report}"
    );
    let above_both = report["overhead_above_floors_us_per_call"]
        .as_f64()
        .expect("above both floors");
    assert!((above_both - (overhead - f - d)).abs() < 1e-6, "{report}");
    // ... and raw's token work pausing one durable write after each group's worth of
    // calls (hsmd's group size in that round), against the same session without pauses.
    let idle = &report["idle_floor"];
    let every = idle["calls_per_pause"].as_array().expect("calls per pause");
    assert_eq!(every.len(), 3, "one per round: {report}");
    assert!(
        every.iter().all(|n| n.as_u64().is_some_and(|n| n >= 1)),
        "{report}"
    );
    assert!(
        idle["pause_us"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    let (steady, paused) = (
        idle["steady_cpu_us_per_call"].as_f64().expect("steady"),
        idle["paused_cpu_us_per_call"].as_f64().expect("paused"),
    );
    assert!(steady > 0.0 && paused > 0.0, "{report}");
    let i = idle["cpu_us_per_call"].as_f64().expect("idle per call");
    assert!((i - (paused - steady)).abs() < 1e-6, "{report}");
    let above_all = report["overhead_above_all_floors_us_per_call"]
        .as_f64()
        .expect("above all floors");
    assert!(
        (above_all - (overhead - f - d - i)).abs() < 1e-6,
        "{report}"
    );
    // 40 calls per side over 3 alternating rounds (14 + 13 + 13), each with its ratio.
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 3, "{report}");
    for r in rounds {
        for f in ["raw_ops_per_sec", "hsmd_ops_per_sec", "ratio"] {
            assert!(r[f].as_f64().is_some_and(|v| v > 0.0), "{f}: {report}");
        }
    }
}

/// Each encryption operation gives a well-formed report on both sides.
#[test]
fn hsmd_bench_reports_the_encryption_operations() {
    require_tools();
    for op in ["decrypt", "encrypt", "generate-data-key"] {
        let dir = tempfile::tempdir().unwrap();
        let out = run(Command::new(workspace_bin("hsmd-bench"))
            .args(["--data-dir"])
            .arg(dir.path())
            .args(["--op", op, "--spec", "RSA_2048", "--concurrency", "2"])
            .args([
                "--calls",
                "30",
                "--warmup",
                "0s",
                "--pin=false",
                "-o",
                "json",
            ]));
        let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{op}: not JSON ({e}):\n{}", out.describe()));
        assert_eq!(report["op"], op, "{report}");
        assert_eq!(report["pin"], false, "--pin=false: {report}");
        assert!(report["client_cpus"].is_null(), "{report}");
        for side in ["raw", "hsmd"] {
            let s = &report[side];
            assert_eq!(s["calls"], 30, "{op} {side}: {report}");
            assert_eq!(s["errors"], 0, "{op} {side}: {report}");
            assert!(
                s["ops_per_sec"].as_f64().is_some_and(|v| v > 0.0),
                "{op} {side}: {report}"
            );
        }
        let expected_spec = if op == "decrypt" {
            "RSA_2048"
        } else {
            "AES_256"
        };
        assert_eq!(report["spec"], expected_spec, "{report}");
    }
}

/// `--op encrypt --kms` drives the Kubernetes KMS v2 plugin over its Unix socket.
#[test]
fn hsmd_bench_drives_the_kms_plugin() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(workspace_bin("hsmd-bench"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--op", "encrypt", "--kms", "--concurrency", "2"])
        .args(["--calls", "30", "--warmup", "0s", "-o", "json"]));
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    assert_eq!(report["kms"], true, "{report}");
    for side in ["raw", "hsmd"] {
        assert_eq!(report[side]["calls"], 30, "{side}: {report}");
        assert_eq!(report[side]["errors"], 0, "{side}: {report}");
    }
    // The calls went through the plugin: its principal's records are in the log.
    let log = std::fs::read_to_string(dir.path().join("audit/audit.log")).unwrap();
    let plugin_calls = log
        .lines()
        .filter(|l| l.contains("/v2.KeyManagementService/Encrypt"))
        .count();
    assert!(plugin_calls >= 30, "{plugin_calls} plugin Encrypt records");
    let refused =
        run_unchecked(Command::new(workspace_bin("hsmd-bench")).args(["--op", "sign", "--kms"]));
    assert!(
        !refused.success()
            && refused
                .stderr
                .contains("--kms works with --op encrypt only"),
        "{}",
        refused.describe()
    );
}

/// `--replicas 2` compares one replica with two on one token, their metadata in a
/// private PostgreSQL the run starts and stops; the calls go to both replicas.
#[test]
fn hsmd_bench_compares_one_replica_with_two() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(workspace_bin("hsmd-bench"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "--replicas",
            "2",
            "--spec",
            "EC_P256",
            "--algorithm",
            "ECDSA_SHA_256",
        ])
        .args(["--concurrency", "2", "--calls", "40", "--rounds", "2"])
        .args(["--warmup", "0s", "-o", "json"]));
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    assert_eq!(report["replicas"], 2, "{report}");
    for side in ["one_replica", "all_replicas"] {
        assert_eq!(report[side]["calls"], 40, "{side}: {report}");
        assert_eq!(report[side]["errors"], 0, "{side}: {report}");
    }
    assert!(report["scaling"].as_f64().unwrap() > 0.0, "{report}");
    // Each replica kept its own chain, and the spread side reached node2 too.
    let signs = |node: &str| {
        std::fs::read_to_string(dir.path().join("audit").join(node).join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/hsmd.v1.KeyService/Sign\""))
            .count()
    };
    assert!(signs("node1") >= 40, "node1 signed {}", signs("node1"));
    assert!(signs("node2") >= 10, "node2 signed {}", signs("node2"));
    let refused = run_unchecked(Command::new(workspace_bin("hsmd-bench")).args([
        "--replicas",
        "2",
        "--kms",
        "--op",
        "encrypt",
    ]));
    assert!(
        !refused.success() && refused.stderr.contains("--replicas compares replicas only"),
        "{}",
        refused.describe()
    );
}

#[tokio::test]
async fn hsmctl_bench_drives_a_running_daemon() {
    let daemon = Daemon::start().await;
    let key = daemon.hsmctl_ok([
        "key",
        "create",
        "--spec",
        "EC_P256",
        "--usage",
        "sign-verify",
    ]);
    let out = daemon.hsmctl_ok([
        "-o",
        "json",
        "bench",
        "--key",
        key.trim(),
        "--algorithm",
        "ECDSA_SHA_256",
        "--concurrency",
        "2",
        "--calls",
        "30",
        "--warmup",
        "0s",
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["hsmd"]["calls"], 30, "{report}");
    assert_eq!(report["hsmd"]["errors"], 0, "{report}");
}
