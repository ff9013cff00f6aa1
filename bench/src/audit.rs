//! `hsmd-bench audit`: the audit log at the speed of the disk. Writes a real chain of
//! `--records` records through hsmd's own audit writer (group commit with fdatasync,
//! a signed checkpoint every 1000 records, rotation at 64 MiB; checkpoints signed by a
//! software P-256 key, see `hsmd::audit_writer`), then times, on the same files and in
//! alternating rounds, `hsmctl audit verify --public-key` (offline) against `sha256sum`
//! and `hsmctl audit query --since --principal` (offline) against `grep -c`. A ratio is
//! hsmctl's bytes/s over the tool's bytes/s.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hsmd::audit_writer::StandaloneLog;
use serde_json::json;

mod events;
use events::event;

#[derive(Parser)]
#[command(
    name = "hsmd-bench audit",
    about = "audit verify and query against sha256sum and grep -c on a generated log"
)]
struct AuditArgs {
    /// Records to write (checkpoints come on top, one per 1000).
    #[arg(long, default_value_t = 3_000_000)]
    records: u64,
    /// Folder for the log (must hold no audit log; kept afterwards). Default: a
    /// temporary folder, removed at the end.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Timed rounds; the sides take turns going first.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// hsmctl to time (default: the one beside this binary).
    #[arg(long, value_name = "PATH")]
    hsmctl: Option<PathBuf>,
    /// Output: table or json.
    #[arg(short, long, default_value = "table")]
    output: String,
}

/// Appends in flight at once (calls waiting for their record).
const IN_FLIGHT: u64 = 256;
/// The principal the query looks for (one of `events::PRINCIPALS`).
const QUERY_PRINCIPAL: &str = "spiffe://corp/ns/payments/sa/api";

/// Runs `hsmd-bench audit ...` (`argv` without the program name's `audit` word).
pub fn main() -> anyhow::Result<()> {
    let args = AuditArgs::parse_from(std::env::args().skip(1));
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("audit.log");
    if !audit_chain_files(&log_path)?.is_empty() {
        bail!("{} already holds an audit log", dir.display());
    }
    let hsmctl = match &args.hsmctl {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("hsmctl"),
    };
    let written = write_log(&log_path, args.records)?;
    let pem = dir.join("audit.pem");
    std::fs::write(&pem, &written.pem)?;
    let files = audit_chain_files(&log_path)?;
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()))
        .sum::<Result<_, _>>()?;
    warm(&files)?;
    let t = Timings::run(&args, &hsmctl, &dir, &pem, &files, &written.since)?;
    let report = t.report(&args, &written, files.len(), bytes);
    if args.output == "json" {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn audit_chain_files(log: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = log.parent().context("log path has no folder")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.log"))
        })
        .collect();
    files.sort(); // audit.log sorts before audit.log.NNN: put the current file last
    if let Some(i) = files.iter().position(|p| p.as_path() == log) {
        let cur = files.remove(i);
        files.push(cur);
    }
    Ok(files)
}

/// What the writer did.
struct Written {
    pem: String,
    secs: f64,
    /// Records in the log (calls + checkpoints).
    head: u64,
    /// The time of the middle record, for `--since`.
    since: String,
}

fn write_log(path: &Path, records: u64) -> anyhow::Result<Written> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (log, pem) = StandaloneLog::open(path).map_err(anyhow::Error::msg)?;
    let since = Arc::new(OnceLock::new());
    let start = Instant::now();
    let head = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..IN_FLIGHT.min(records) {
            let (log, since) = (log.clone(), since.clone());
            tasks.spawn(async move {
                let mut i = lane;
                while i < records {
                    if i == records / 2 {
                        let now = time::OffsetDateTime::now_utc();
                        let _ =
                            since.set(now.format(&time::format_description::well_known::Rfc3339));
                    }
                    log.append(event(i)).await?;
                    i += IN_FLIGHT;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        log.close().await
    });
    let head = head.map_err(anyhow::Error::msg)?;
    let secs = start.elapsed().as_secs_f64();
    let since = match Arc::try_unwrap(since).ok().and_then(|s| s.into_inner()) {
        Some(Ok(s)) => s,
        _ => bail!("no middle record"),
    };
    Ok(Written {
        pem,
        secs,
        head,
        since,
    })
}

/// Reads the files once, so every timed side finds them in the page cache.
fn warm(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut f = File::open(f)?;
        while f.read(&mut buf)? > 0 {}
    }
    Ok(())
}

/// One finished child: wall time and its own peak RSS.
struct Timed {
    secs: f64,
    max_rss_kib: u64,
}

/// Runs `cmd` with stdout to `out`; fails unless it exits with one of `ok_codes`. The
/// peak RSS is the child's VmHWM, sampled every 10 ms until it exits (wait4's ru_maxrss
/// would also count this process's own image, which the child shares until exec).
fn timed(cmd: &mut Command, out: &Path, ok_codes: &[i32]) -> anyhow::Result<Timed> {
    cmd.stdout(File::create(out)?).stderr(Stdio::inherit());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let done = AtomicBool::new(false);
    let (status, hwm) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut hwm = 0;
            while !done.load(Ordering::Relaxed) {
                hwm = hwm.max(vm_hwm_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            hwm
        });
        let mut status = 0;
        // SAFETY: a plain out-parameter; the child is ours and not yet waited for.
        let got = unsafe { libc::wait4(pid, &mut status, 0, std::ptr::null_mut()) };
        done.store(true, Ordering::Relaxed);
        let hwm = sampler.join().unwrap_or(0);
        (
            if got == pid {
                Ok(status)
            } else {
                Err(std::io::Error::last_os_error())
            },
            hwm,
        )
    });
    let secs = start.elapsed().as_secs_f64();
    let status = status.with_context(|| format!("wait4 {cmd:?}"))?;
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if !code.is_some_and(|c| ok_codes.contains(&c)) {
        bail!(
            "{cmd:?} failed (wait status {status}); output in {}",
            out.display()
        );
    }
    Ok(Timed {
        secs,
        max_rss_kib: hwm,
    })
}

/// VmHWM of a running process, KiB (0 once it has exited).
fn vm_hwm_kib(pid: libc::pid_t) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Seconds per side over all rounds, and what the outputs said.
#[derive(Default)]
struct Timings {
    verify: f64,
    sha256sum: f64,
    query: f64,
    grep: f64,
    verify_rss_kib: u64,
    query_rss_kib: u64,
    query_matches: u64,
    grep_matches: u64,
    verify_report: serde_json::Value,
}

impl Timings {
    fn run(
        args: &AuditArgs,
        hsmctl: &Path,
        dir: &Path,
        pem: &Path,
        files: &[PathBuf],
        since: &str,
    ) -> anyhow::Result<Self> {
        let mut t = Timings::default();
        let (vout, qout, out) = (
            dir.join("verify.out"),
            dir.join("query.out"),
            dir.join("tool.out"),
        );
        for round in 0..args.rounds {
            let hsmd_first = round % 2 == 1;
            for step in 0..2 {
                if (step == 0) == hsmd_first {
                    let v = timed(
                        Command::new(hsmctl)
                            .args(["-o", "json", "audit", "verify", "--public-key"])
                            .arg(pem)
                            .args(files),
                        &vout,
                        &[0],
                    )?;
                    t.verify += v.secs;
                    t.verify_rss_kib = t.verify_rss_kib.max(v.max_rss_kib);
                    let q = timed(
                        Command::new(hsmctl)
                            .args([
                                "audit",
                                "query",
                                "--since",
                                since,
                                "--principal",
                                QUERY_PRINCIPAL,
                            ])
                            .args(files),
                        &qout,
                        &[0],
                    )?;
                    t.query += q.secs;
                    t.query_rss_kib = t.query_rss_kib.max(q.max_rss_kib);
                } else {
                    t.sha256sum += timed(Command::new("sha256sum").args(files), &out, &[0])?.secs;
                    t.grep += timed(
                        Command::new("grep")
                            .args(["-c", QUERY_PRINCIPAL])
                            .args(files),
                        &out,
                        &[0, 1],
                    )?
                    .secs;
                    t.grep_matches = count_grep(&out)?;
                }
            }
        }
        t.verify_report =
            serde_json::from_slice(&std::fs::read(&vout)?).context("verify output")?;
        if t.verify_report["ok"] != true {
            bail!("the generated log does not verify: {}", t.verify_report);
        }
        t.query_matches = std::fs::read(&qout)?
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        Ok(t)
    }

    fn report(&self, args: &AuditArgs, w: &Written, files: usize, bytes: u64) -> serde_json::Value {
        let total = bytes as f64 * f64::from(args.rounds);
        let rate = |secs: f64| if secs > 0.0 { total / secs } else { 0.0 };
        let ratio = |hsmd: f64, tool: f64| if hsmd > 0.0 { tool / hsmd } else { 0.0 };
        json!({
            "records": args.records,
            "records_with_checkpoints": w.head,
            "files": files,
            "bytes": bytes,
            "rounds": args.rounds,
            "writer_secs": w.secs,
            "writer_records_per_sec": w.head as f64 / w.secs,
            "verify_bytes_per_sec": rate(self.verify),
            "sha256sum_bytes_per_sec": rate(self.sha256sum),
            "verify_ratio_vs_sha256sum": ratio(self.verify, self.sha256sum),
            "verify_peak_rss_kib": self.verify_rss_kib,
            "checkpoints_verified": self.verify_report["checkpoints_verified"],
            "query_bytes_per_sec": rate(self.query),
            "grep_bytes_per_sec": rate(self.grep),
            "query_ratio_vs_grep": ratio(self.query, self.grep),
            "query_peak_rss_kib": self.query_rss_kib,
            "query_since": w.since,
            "query_principal": QUERY_PRINCIPAL,
            "query_matches": self.query_matches,
            "grep_matches": self.grep_matches,
            "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

/// Sum of `grep -c`'s per-file counts (`FILE:N` lines, or `N` for one file).
fn count_grep(out: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(out)?;
    Ok(text
        .lines()
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
        .sum())
}

fn print_table(r: &serde_json::Value) {
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / (1u64 << 20) as f64;
    println!(
        "log: {} records ({} with checkpoints) in {} files, {:.0} MiB; writer {:.0} records/s",
        r["records"],
        r["records_with_checkpoints"],
        r["files"],
        mib(&r["bytes"]),
        r["writer_records_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!(
        "verify  {:>8.0} MiB/s   sha256sum {:>8.0} MiB/s   ratio {:.2}   verify peak RSS {} KiB ({} checkpoint signatures)",
        mib(&r["verify_bytes_per_sec"]),
        mib(&r["sha256sum_bytes_per_sec"]),
        r["verify_ratio_vs_sha256sum"].as_f64().unwrap_or(0.0),
        r["verify_peak_rss_kib"],
        r["checkpoints_verified"]
    );
    println!(
        "query   {:>8.0} MiB/s   grep -c   {:>8.0} MiB/s   ratio {:.2}   query peak RSS {} KiB ({} of {} lines of the principal since {})",
        mib(&r["query_bytes_per_sec"]),
        mib(&r["grep_bytes_per_sec"]),
        r["query_ratio_vs_grep"].as_f64().unwrap_or(0.0),
        r["query_peak_rss_kib"],
        r["query_matches"],
        r["grep_matches"],
        r["query_since"].as_str().unwrap_or("")
    );
}
