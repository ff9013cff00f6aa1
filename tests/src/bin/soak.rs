//! `soak MINUTES [RESTART_EVERY_SECS [CREATE_EVERY]]`: mixed load on a real daemon and
//! SoftHSM2 token for MINUTES, restarting hsmd every RESTART_EVERY_SECS (default 600),
//! by SIGTERM and by `kill -9` in turn. One round in CREATE_EVERY (default 1000; 0 for
//! none) of each client makes a key. `scripts/soak MINUTES` builds and runs it.
//!
//! Every 30 s it prints a row: minute, hsmd's pid, RSS, open files, calls answered in
//! all and per second. After every restart and at the end it checks what the crash test
//! checks: every answered call has its audit record, `hsmctl audit verify` accepts the
//! log, start-up reconciliation found `orphans=0 missing=0`. At the end it checks that
//! no run of hsmd grew (from its first sample after a minute of load to its last) by
//! more than RSS_GROWTH_KIB of memory or FD_GROWTH open files, prints the table's
//! summary and exits 1 if any check failed.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hsmd_e2e::{Daemon, load::Fixture, tools::rss_kib};

/// Clients calling at once.
const CLIENTS: usize = 16;
/// Seconds between rows of the table.
const SAMPLE_SECS: u64 = 30;
/// The most one run of hsmd may grow under steady load, after its first minute.
const RSS_GROWTH_KIB: u64 = 32 * 1024;
/// The most open files one run of hsmd may gain under steady load.
const FD_GROWTH: usize = 16;

struct Sample {
    secs: u64,
    pid: u32,
    rss_kib: u64,
    fds: usize,
    answered: usize,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: u64 = match args.first().and_then(|m| m.parse().ok()) {
        Some(m) if m >= 1 => m,
        _ => {
            eprintln!("usage: soak MINUTES [RESTART_EVERY_SECS [CREATE_EVERY]]");
            return ExitCode::from(2);
        }
    };
    let restart_every = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(600u64);
    let create_every = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let problems = rt.block_on(soak(
        Duration::from_secs(minutes * 60),
        Duration::from_secs(restart_every.max(SAMPLE_SECS)),
        create_every,
    ));
    if problems.is_empty() {
        println!("==> soak: ok");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("==> soak: FAILED: {p}");
        }
        ExitCode::FAILURE
    }
}

async fn soak(length: Duration, restart_every: Duration, create_every: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut d = Daemon::start().await;
    let load = Fixture::make(&d, "alias/soak-moving").await;
    let started = Instant::now();
    let mut answered: HashSet<String> = HashSet::new();
    let mut made = 0usize;
    let mut samples: Vec<Sample> = Vec::new();
    println!("minute  pid      rss_kib  fds  answered  calls/s");
    for run in 0usize.. {
        let mut running = load.start(&d, CLIENTS, create_every);
        let run_started = Instant::now();
        let last = loop {
            tokio::time::sleep(Duration::from_secs(SAMPLE_SECS)).await;
            running.answered_so_far(&mut answered);
            let pid = d.pid();
            let prev = samples.last().map_or(0, |s| s.answered);
            let s = Sample {
                secs: started.elapsed().as_secs(),
                pid,
                rss_kib: rss_kib(pid).unwrap_or(0),
                fds: fds(pid),
                answered: answered.len(),
            };
            println!(
                "{:>6.1}  {:<7}  {:>7}  {:>3}  {:>8}  {:>7.0}",
                s.secs as f64 / 60.0,
                s.pid,
                s.rss_kib,
                s.fds,
                s.answered,
                (s.answered - prev) as f64 / SAMPLE_SECS as f64
            );
            samples.push(s);
            let end = started.elapsed() >= length;
            if end || run_started.elapsed() >= restart_every {
                break end;
            }
        };
        // Growth of this run of hsmd, from its sample after a minute to its last.
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.pid == d.pid()).collect();
        if let (Some(first), Some(end)) = (mine.iter().find(|s| s.secs >= 60), mine.last())
            && end.secs > first.secs
        {
            let grew = end.rss_kib.saturating_sub(first.rss_kib);
            let more_fds = end.fds.saturating_sub(first.fds);
            println!(
                "==> run {run} (pid {}): RSS {} -> {} KiB, open files {} -> {}",
                end.pid, first.rss_kib, end.rss_kib, first.fds, end.fds
            );
            if grew > RSS_GROWTH_KIB {
                problems.push(format!(
                    "pid {} grew by {grew} KiB under steady load (bound {RSS_GROWTH_KIB} KiB)",
                    end.pid
                ));
            }
            if more_fds > FD_GROWTH {
                problems.push(format!(
                    "pid {} gained {more_fds} open files (bound {FD_GROWTH})",
                    end.pid
                ));
            }
        }
        // Stop: SIGTERM on even runs, kill -9 on odd ones, and at the end SIGTERM.
        let hard = !last && run % 2 == 1;
        if hard {
            d.kill_hard();
        } else {
            d.stop().await;
        }
        made += running.finish(&mut answered).await.len();
        d.start_again().await;
        check(
            &d,
            &answered,
            &format!(
                "after run {run} ({})",
                if hard { "kill -9" } else { "SIGTERM" }
            ),
            &mut problems,
        );
        if last {
            break;
        }
    }
    d.stop().await;
    println!(
        "==> soak: {} minutes, {} calls answered, {made} keys made, {} restarts",
        started.elapsed().as_secs() / 60,
        answered.len(),
        samples.iter().map(|s| s.pid).collect::<HashSet<_>>().len()
    );
    problems
}

/// What must hold after every restart: every answered call has its record, the log
/// verifies, and start-up reconciliation found the token and the store in agreement.
fn check(d: &Daemon, answered: &HashSet<String>, when: &str, problems: &mut Vec<String>) {
    let logged = d.audit_request_ids();
    let missing = answered.iter().filter(|r| !logged.contains(*r)).count();
    if missing > 0 {
        problems.push(format!("{when}: {missing} answered calls without a record"));
    }
    let out = d.hsmctl(["audit", "verify"]);
    if !(out.success() && out.stdout.trim_start().starts_with("ok")) {
        problems.push(format!("{when}: hsmctl audit verify: {}", out.describe()));
    }
    let log = d.stderr_text();
    match log
        .lines()
        .find(|l| l.contains("token and store reconciled"))
    {
        Some(r) if r.contains("orphans=0") && r.contains("missing=0") => {
            println!(
                "==> {when}: {}",
                r.split("reconciled").nth(1).unwrap_or(r).trim()
            );
        }
        Some(r) => problems.push(format!("{when}: {r}")),
        None => problems.push(format!("{when}: no reconciliation report")),
    }
}
