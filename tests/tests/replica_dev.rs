//! `hsmd dev --postgres --replicas 2` (issue 17, "Ops"): one command gives a newcomer a
//! private PostgreSQL (TLS with the dev PKI, password authentication) and two replicas
//! on the dev token; the profile lists both, each signs, each verifies its own audit
//! chain, the replicas reach PostgreSQL over TLS only, and SIGTERM stops everything,
//! PostgreSQL included. This binary's PostgreSQL is the one `hsmd dev` starts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hsmd_e2e::tools::{run_unchecked, workspace_bin};

fn hsmctl(dir: &Path, args: &[&str]) -> hsmd_e2e::CmdOutput {
    run_unchecked(
        Command::new(workspace_bin("hsmctl"))
            .arg("--profile")
            .arg(dir.join("client.toml"))
            .args(args)
            .env_remove("HSMCTL_PROFILE"),
    )
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn dev_postgres_runs_two_replicas_over_tls_and_stops_them_all() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let log = std::fs::File::create(root.path().join("dev.log")).unwrap();
    let mut dev = Command::new(workspace_bin("hsmd"))
        .args([
            "dev",
            "--postgres",
            "--replicas",
            "2",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let dev_log = || std::fs::read_to_string(root.path().join("dev.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let endpoints = loop {
        let listed = std::fs::read_to_string(dir.join("client.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("endpoints")?.as_array().cloned())
            .unwrap_or_default();
        if listed.len() == 2 {
            break listed
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect::<Vec<_>>();
        }
        assert!(
            dev.try_wait().unwrap().is_none(),
            "hsmd dev exited:\n{}",
            dev_log()
        );
        assert!(
            Instant::now() < deadline,
            "no two replicas in 120 s:\n{}",
            dev_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let key = hsmctl(
        &dir,
        &[
            "key",
            "create",
            "--spec",
            "EC_P256",
            "--usage",
            "sign-verify",
        ],
    );
    assert!(key.success(), "{}", key.describe());
    let key = key.stdout.trim().to_string();
    let msg = root.path().join("msg");
    std::fs::write(&msg, b"two replicas").unwrap();
    let sig = root.path().join("sig");
    for endpoint in &endpoints {
        let out = hsmctl(
            &dir,
            &[
                "--endpoint",
                endpoint,
                "sign",
                &key,
                "--algorithm",
                "ECDSA_SHA_256",
                "--in",
                msg.to_str().unwrap(),
                "--out",
                sig.to_str().unwrap(),
            ],
        );
        assert!(out.success(), "sign on {endpoint}: {}", out.describe());
    }
    let verify = hsmctl(&dir, &["audit", "verify"]);
    assert!(verify.success(), "{}", verify.describe());
    let lines: Vec<&str> = verify.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", verify.stdout);
    assert!(
        lines[0].starts_with("ok: node node1: "),
        "{}",
        verify.stdout
    );
    assert!(
        lines[1].starts_with("ok: node node2: "),
        "{}",
        verify.stdout
    );

    // Every connection of the replicas to PostgreSQL is TLS.
    let config = std::fs::read_to_string(dir.join("hsmd-node1.toml")).unwrap();
    let url = config
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))
        .map(|u| u.trim_end_matches('"').to_string())
        .expect("store url in hsmd-node1.toml");
    assert!(url.ends_with("?sslmode=require"), "{url}");
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("port");
    let password = std::fs::read_to_string(dir.join("postgres.password")).unwrap();
    let ssl = |tls: bool| {
        let out = run_unchecked(
            Command::new(hsmd_e2e::postgres::bin_dir().join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    port,
                    "-U",
                    "hsmd",
                    "-d",
                    "hsmd",
                    "-At",
                    "-c",
                ])
                .arg(format!(
                    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.application_name = 'hsmd' AND s.ssl = {tls}"
                ))
                .env("PGPASSWORD", password.trim()),
        );
        assert!(out.success(), "{}", out.describe());
        out.stdout.trim().parse::<u32>().unwrap()
    };
    assert!(ssl(true) >= 2, "each replica holds TLS connections");
    assert_eq!(ssl(false), 0, "no replica connection without TLS");

    // SIGTERM stops the replicas, then PostgreSQL.
    let pid = nix_pid(dev.id());
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = dev.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hsmd dev did not stop:\n{}",
            dev_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", dev_log());
    let pg_data = dir.join("postgres").join("data");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(pg_data.to_str().unwrap()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL still runs after hsmd dev stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(processes_with(&format!("--data-dir {}", dir.display())).is_empty());
}

fn nix_pid(id: u32) -> libc::pid_t {
    libc::pid_t::try_from(id).expect("pid fits pid_t")
}
