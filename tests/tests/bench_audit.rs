//! `hsmd-bench audit` runs end to end on a small log (not a timed assertion): it writes
//! a chain through hsmd's audit writer, verifies and queries it offline with hsmctl beside
//! `sha256sum` and `grep -c`, and prints a well-formed JSON report.

use std::process::Command;

use hsmd_e2e::run;
use hsmd_e2e::tools::workspace_bin;

#[test]
fn hsmd_bench_audit_reports_both_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(workspace_bin("hsmd-bench"))
        .args(["audit", "--records", "20000", "--rounds", "1", "--dir"])
        .arg(dir.path())
        .args(["-o", "json"]));
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    for f in [
        "verify_ratio_vs_sha256sum",
        "query_ratio_vs_grep",
        "writer_records_per_sec",
        "verify_bytes_per_sec",
        "sha256sum_bytes_per_sec",
        "query_bytes_per_sec",
        "grep_bytes_per_sec",
    ] {
        assert!(report[f].as_f64().is_some_and(|v| v > 0.0), "{f}: {report}");
    }
    // 20,000 calls, and signed checkpoints (about one per 1,000; one seals the log).
    let all = report["records_with_checkpoints"].as_u64().unwrap();
    assert!(all > 20000, "{report}");
    assert_eq!(report["checkpoints_verified"], all - 20000, "{report}");
    assert!(
        report["verify_peak_rss_kib"]
            .as_u64()
            .is_some_and(|r| r > 0),
        "{report}"
    );
    // Every match of the query is one of grep's lines of that principal.
    let (q, g) = (&report["query_matches"], &report["grep_matches"]);
    assert!(
        q.as_u64()
            .is_some_and(|q| q > 0 && q <= g.as_u64().unwrap()),
        "{report}"
    );
}
