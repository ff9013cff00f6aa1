//! `hsmctl audit report`: one daemon (started once for this binary) whose log holds
//! allowed, invalid, denied, throttled and failed calls and key lifecycle events. The
//! HTML report has every section, its figures are those of `hsmctl -o json audit stats`
//! for the same range, `-o json` gives the same numbers, a principal made of markup is
//! escaped, and headless Chromium draws the page to a PNG with no network at all. An
//! edited record makes the report say BROKEN and exit 1.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    algorithms::sign,
    args,
    configured::with_admin_policy,
    tools::{run_unchecked, write_file},
    v1::{MessageType, SigningAlgorithm, key_service_client::KeyServiceClient},
};
use serde_json::Value;

/// A principal a client certificate chose: markup that must never reach the page raw.
const HOSTILE: &str = "spiffe://hsmd.dev/<script>alert(1)</script>";

const CONFIG: &str = r#"
[rate_limits]
sign = "10/s burst 5"

[audit]
checkpoint_every = 10
"#;

const INSTALL_CHROMIUM: &str = "apt-get install -y chromium (scripts/test does it)";

#[tokio::test]
async fn report_shows_every_kind_of_call_with_the_figures_of_audit_stats() {
    let (mut d, _) = Daemon::start_configured(&with_admin_policy(CONFIG)).await;
    let (since, until) = make_history(&mut d).await;
    let dir = d.scratch();

    let stats = json_of(
        &d,
        args![
            "-o", "json", "audit", "stats", "--since", since, "--until", until
        ],
    );
    let html_path = dir.join("report.html");
    d.hsmctl_ok(args![
        "audit", "report", "--since", since, "--until", until, "--out", html_path
    ]);
    let html = fs::read_to_string(&html_path).expect("report.html");
    let report = json_of(
        &d,
        args![
            "-o", "json", "audit", "report", "--since", since, "--until", until
        ],
    );

    check_json_matches_stats(&report, &stats);
    check_sections(&html, &report, &stats);
    check_checkpoint(&d, &html, &report);
    check_escaped(&html);
    check_self_contained(&html);
    render_with_chromium(&dir, &html_path);
    report_of_a_broken_chain_says_so(&d, &since, &until);
}

/// An edited record: the report is still written, says BROKEN, and exits 1.
fn report_of_a_broken_chain_says_so(d: &Daemon, since: &str, until: &str) {
    let text = fs::read_to_string(d.audit_log_path()).expect("audit log");
    let edited = text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"no\"", 1);
    assert_ne!(edited, text, "an ok record to edit");
    // Same length, same inode: the daemon keeps appending where it was.
    fs::write(d.audit_log_path(), edited).expect("rewrite audit log");
    let html_path = d.scratch().join("broken.html");
    let out = d.hsmctl(args![
        "audit", "report", "--since", since, "--until", until, "--out", html_path
    ]);
    out.expect_code(1);
    let html = fs::read_to_string(&html_path).expect("broken.html");
    assert!(html.contains(">BROKEN<"), "the page says BROKEN");
    assert!(
        html.contains("audit chain BROKEN at record "),
        "and so does the summary"
    );
}

/// Makes the calls the report is about; returns the RFC 3339 range that holds exactly
/// them: from the first record to the one of a last marker call (excluded).
async fn make_history(d: &mut Daemon) -> (String, String) {
    let dir = d.scratch();
    // Failed: a key whose private half vanished from the token behind hsmd's back; after
    // a restart hsmd has no cached handle and the token has no object (INTERNAL).
    let gone = create(d, Some("report-gone"));
    let deleted = d.pkcs11_tool(
        true,
        &["--delete-object", "--type", "privkey", "--label", &gone],
    );
    assert!(deleted.success(), "{}", deleted.describe());
    d.restart().await;

    let key = create(d, Some("report-main"));
    let msg = write_file(&dir, "m.txt", b"report me");
    d.hsmctl_ok(args![
        "sign",
        "alias/report-main",
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg,
        "--out",
        dir.join("m.sig")
    ]);
    let failed = sign(
        &mut d.keys(),
        &gone,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"x",
    )
    .await;
    assert_eq!(
        failed.expect_err("no private key").code(),
        tonic::Code::Internal
    );
    // Invalid: a key that does not exist.
    d.hsmctl(args!["key", "describe", "alias/report-nope"])
        .expect_code(2);
    // Lifecycle: disabled, enabled, deletion scheduled.
    let spare = create(d, None);
    d.hsmctl_ok(args!["key", "disable", spare]);
    d.hsmctl_ok(args!["key", "enable", spare]);
    d.hsmctl_ok(args!["key", "schedule-deletion", spare, "--days", "7"]);
    // Denied: a principal the policy does not know.
    let cert = d.issue_from_dev_ca("hostile", Some(HOSTILE));
    let channel = d
        .connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .expect("TLS");
    let mut evil = KeyServiceClient::new(channel);
    let denied = sign(
        &mut evil,
        &key,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"x",
    )
    .await;
    assert_eq!(
        denied.expect_err("denied").code(),
        tonic::Code::PermissionDenied
    );
    // Throttled: a burst over `sign = "10/s burst 5"`.
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let (mut keys, key) = (d.keys(), key.clone());
        tasks.push(tokio::spawn(async move {
            sign(
                &mut keys,
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                &[i],
            )
            .await
        }));
    }
    for t in tasks {
        let _ = t.await.expect("sign task");
    }
    d.hsmctl_ok(args!["random", "8"]);
    let lines = d.audit_lines();
    let calls: Vec<_> = lines
        .iter()
        .filter(|l| !l.str("method").is_empty())
        .collect();
    let first = calls.first().expect("records").str("time").to_string();
    assert!(
        calls
            .iter()
            .any(|l| l.str("method").ends_with("/GenerateRandom")),
        "the closing GenerateRandom is not in the log"
    );
    // The range ends at the newest record: a throttled call's record shares the next
    // group's fsync, so it may land after the GenerateRandom that closes the run.
    let last = calls
        .iter()
        .map(|l| l.str("time").to_string())
        .max()
        .expect("records");
    (first, last)
}

fn create(d: &Daemon, alias: Option<&str>) -> String {
    let mut a = args![
        "key",
        "create",
        "--spec",
        "EC_P256",
        "--usage",
        "sign-verify"
    ];
    if let Some(alias) = alias {
        a.extend(args!["--alias", alias]);
    }
    d.hsmctl_ok(a)
}

fn json_of(d: &Daemon, a: Vec<std::ffi::OsString>) -> Value {
    let out = d.hsmctl_ok(a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn outcome_total(rows: &[Value], outcome: &str) -> u64 {
    rows.iter()
        .map(|r| r[outcome].as_u64().expect("count"))
        .sum()
}

fn check_json_matches_stats(report: &Value, stats: &Value) {
    assert_eq!(
        report["stats"], *stats,
        "report -o json carries audit stats as is"
    );
    let rows = stats["rows"].as_array().expect("rows");
    for outcome in ["ok", "denied", "invalid", "failed", "throttled", "total"] {
        let n = outcome_total(rows, outcome);
        assert_eq!(report["totals"][outcome], n, "{outcome}");
        if outcome != "total" {
            assert!(n > 0, "the history has {outcome} calls: {stats}");
        }
    }
    let hourly: u64 = report["calls_per_hour"]
        .as_array()
        .expect("hours")
        .iter()
        .map(|h| h["total"].as_u64().unwrap())
        .sum();
    assert_eq!(
        hourly,
        outcome_total(rows, "total"),
        "the chart's data adds up"
    );
    let refused = report["refusals"].as_array().expect("refusals");
    for outcome in ["denied", "failed", "throttled"] {
        let listed: u64 = refused
            .iter()
            .filter(|g| g["outcome"] == outcome)
            .map(|g| g["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            listed,
            outcome_total(rows, outcome),
            "every {outcome} call is listed"
        );
    }
    assert!(
        refused
            .iter()
            .any(|g| g["outcome"] == "denied" && g["principal"] == HOSTILE),
        "{report}"
    );
    assert!(
        refused
            .iter()
            .any(|g| g["outcome"] == "throttled" && g["reason"] == "RATE_LIMITED"),
        "{report}"
    );
    let events: Vec<&str> = report["lifecycle"]
        .as_array()
        .expect("lifecycle")
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for event in ["created", "disabled", "enabled", "deletion scheduled"] {
        assert!(events.contains(&event), "{event} in {events:?}");
    }
    assert_eq!(report["top_principals"][0]["principal"], ADMIN_PRINCIPAL);
}

/// Each section is there, and the per-principal table holds the rows of audit stats.
fn check_sections(html: &str, report: &Value, stats: &Value) {
    for id in [
        "summary",
        "calls-per-hour",
        "top-principals",
        "top-keys",
        "refusals",
        "lifecycle",
        "checkpoints",
        "stats",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{id}\">")),
            "section {id}"
        );
    }
    assert!(html.contains("<svg"), "the chart is inline SVG");
    for row in stats["rows"].as_array().expect("rows") {
        let mut expected = format!(
            "<tr><td>{}</td><td>{}</td>",
            esc(row["principal"].as_str().unwrap()),
            row["method"].as_str().unwrap()
        );
        for outcome in ["ok", "denied", "invalid", "failed", "throttled", "total"] {
            expected.push_str(&format!("<td class=\"n\">{}</td>", row[outcome]));
        }
        assert!(html.contains(&expected), "stats row {expected} in the page");
    }
    let summary = report["summary"].as_str().expect("summary");
    assert!(
        summary.contains(&format!("{} calls", report["totals"]["total"])),
        "{summary}"
    );
    // The chain part differs: the log grew between the two runs.
    let figures = summary.split("; audit chain").next().unwrap_or(summary);
    assert!(
        html.contains(&esc(figures)),
        "the page shows the summary line: {figures}"
    );
    assert!(html.contains("Reviewed by"), "a place to sign off");
}

/// The checkpoint status is the server's verification: verified, with a head hash that
/// is the hash of a record in the log file.
fn check_checkpoint(d: &Daemon, html: &str, report: &Value) {
    let c = &report["checkpoint"];
    assert_eq!(c["ok"], true, "{c}");
    assert!(c["checkpoints_verified"].as_u64().unwrap() >= 1, "{c}");
    let marker = "<th>head hash</th><td><code>";
    let page_head = html
        .split_once(marker)
        .and_then(|(_, rest)| rest.get(..64))
        .unwrap_or_else(|| panic!("no head hash in the page"));
    assert!(html.contains(">verified<"), "the page says verified");
    let hashes: Vec<String> = d
        .audit_lines()
        .iter()
        .map(|l| l.str("hash").to_string())
        .collect();
    for head in [c["head_hash"].as_str().expect("head_hash"), page_head] {
        assert!(
            hashes.iter().any(|h| h == head),
            "head {head} is a record of the log"
        );
    }
}

fn check_escaped(html: &str) {
    assert!(
        !html.contains("<script"),
        "no script element, and the principal is escaped"
    );
    assert!(
        html.contains(&esc(HOSTILE)),
        "the hostile principal is shown escaped"
    );
}

/// No external resource of any kind: the only URL is the SVG namespace.
fn check_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for bad in [
        "src=", "href=", "url(", "@import", "<link", "<img", "<iframe", "<object", "<embed",
    ] {
        assert!(!lower.contains(bad), "{bad} in the report");
    }
    let urls = lower.matches("http://").count() + lower.matches("https://").count();
    let namespaces = lower
        .matches("xmlns=\"http://www.w3.org/2000/svg\"")
        .count();
    assert_eq!(urls, namespaces, "no URL but the SVG namespace");
}

/// Draws the page with headless Chromium, every host name unresolvable, into a PNG.
fn render_with_chromium(dir: &Path, html: &Path) {
    let png = dir.join("report.png");
    let profile = dir.join("chromium-profile");
    let chromium = find_chromium();
    let out = run_unchecked(
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg("--host-resolver-rules=MAP * ~NOTFOUND")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg("--window-size=1200,2000")
            .arg(format!("file://{}", html.display())),
    );
    let bytes = fs::read(&png).unwrap_or_else(|e| panic!("no PNG ({e})\n{}", out.describe()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 2000), "{}", out.describe());
    assert!(
        bytes.len() > 50_000,
        "a drawn page, not a blank one: {} bytes",
        bytes.len()
    );
}

fn find_chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("chromium not found; {INSTALL_CHROMIUM}"))
}

/// What the report must have made of `text` (html-escape's `encode_safe`).
fn esc(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            '/' => out.push_str("&#x2F;"),
            c => out.push(c),
        }
    }
    out
}
