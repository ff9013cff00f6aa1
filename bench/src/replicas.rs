//! `hsmd-bench --replicas N`: what does a second replica buy? A private PostgreSQL and N
//! replicas of hsmd on one dev token (`hsmd dev --store-url ... --node-id nodeK`), then
//! the same load in alternating rounds against one replica and against all N (the
//! connections spread over them), reported side by side with the scaling factor. Both
//! sides share the token and the machine: on a machine with few cores the replicas
//! compete for them, which the figure shows rather than hides.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hsm_client::bench::{self, Length, Samples};
use hsm_client::{Client, Profile};
use hsmd::dev::postgres::LocalPostgres;
use hsmd::domain::spec::{KeySpec, SigningAlgorithm};

use super::{Args, slice_of};

/// One replica process.
struct Replica {
    child: Child,
    endpoint: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        super::stop_child(&mut self.child);
    }
}

/// Starts replica `node` on `dir` with the store at `url`; returns once it listens.
fn start_replica(
    dir: &Path,
    url: &str,
    password_file: &Path,
    node: &str,
) -> anyhow::Result<Replica> {
    let exe = std::env::current_exe()?.with_file_name("hsmd");
    if !exe.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p hsmd)",
            exe.display()
        );
    }
    let marker = dir.join("replicas").join(node);
    let _ = std::fs::remove_file(&marker);
    let mut child = Command::new(&exe)
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args([
            "--store-url",
            url,
            "--node-id",
            node,
            "--store-password-file",
        ])
        .arg(password_file)
        .env("RUST_LOG", "warn,cryptoki::mechanism=off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            return Ok(Replica {
                child,
                endpoint: text.trim().to_string(),
            });
        }
        if let Some(status) = child.try_wait()? {
            bail!("replica {node} exited during start-up: {status}");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("replica {node} did not listen within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the comparison and prints it.
pub(crate) fn run(
    args: &Args,
    spec: KeySpec,
    algorithm: SigningAlgorithm,
    n: u16,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir: PathBuf = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    std::fs::create_dir_all(&dir)?;
    let pg = LocalPostgres::start(&tmp.path().join("postgres"))?;
    pg.create_database("bench")?;
    let password_file = tmp.path().join("pg.password");
    std::fs::write(&password_file, format!("{}\n", pg.password()))?;
    let url = pg.url("bench");
    let mut replicas = Vec::new();
    for k in 1..=n {
        replicas.push(start_replica(
            &dir,
            &url,
            &password_file,
            &format!("node{k}"),
        )?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (one, all, first_error) = runtime.block_on(async {
        let profile = Profile::load(dir.join("client.toml"))?;
        let connect = |endpoint: &str| {
            let mut p = profile.clone();
            p.set_endpoint(endpoint.to_string());
            async move { Client::connect(&p).await }
        };
        let conns = args.connections.max(1);
        let mut single = Vec::new();
        for _ in 0..conns {
            single.push(connect(&replicas[0].endpoint).await?);
        }
        let mut spread = Vec::new();
        for _ in 0..conns {
            for r in &replicas {
                spread.push(connect(&r.endpoint).await?);
            }
        }
        let bspec = super::bench_spec(&single[0], args, spec, algorithm).await?;
        let prepared = bench::prepare(&single, &bspec).await?;
        let length = args
            .calls
            .map(Length::Calls)
            .unwrap_or(Length::Duration(args.duration));
        let (mut one, mut all) = (Samples::default(), Samples::default());
        let mut first_error = None;
        for round in 0..args.rounds {
            let warmup = if round == 0 {
                args.warmup
            } else {
                Duration::ZERO
            };
            let slice = slice_of(length, round, args.rounds);
            // Take turns going first, as the main comparison does.
            let order: [&[Client]; 2] = if round % 2 == 0 {
                [&single, &spread]
            } else {
                [&spread, &single]
            };
            for clients in order {
                let (s, err) = bench::measure(clients, &bspec, &prepared, warmup, slice).await;
                first_error = first_error.or(err);
                if std::ptr::eq(clients, single.as_slice()) {
                    one.add(s);
                } else {
                    all.add(s);
                }
            }
        }
        anyhow::Ok((one, all, first_error))
    })?;
    drop(replicas);
    let (one, all) = (one.stats(), all.stats());
    let scaling = if one.ops_per_sec > 0.0 {
        all.ops_per_sec / one.ops_per_sec
    } else {
        0.0
    };
    if args.output == "json" {
        println!(
            "{}",
            serde_json::json!({
                "op": args.op, "spec": spec.name(), "concurrency": args.concurrency,
                "connections_per_replica": args.connections.max(1), "replicas": n,
                "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
                "one_replica": one, "all_replicas": all, "scaling": scaling,
                "first_error": first_error,
            })
        );
        return Ok(());
    }
    println!(
        "{} {} concurrency {} ({} connection(s) per replica), one token, PostgreSQL store",
        args.op_name(),
        spec.name(),
        args.concurrency,
        args.connections.max(1)
    );
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "", "ops/s", "p50 ms", "p99 ms", "calls", "errors"
    );
    for (name, s) in [
        ("1 replica".to_string(), &one),
        (format!("{n} replicas"), &all),
    ] {
        println!(
            "{name:<14} {:>10.0} {:>9.2} {:>9.2} {:>9} {:>7}",
            s.ops_per_sec, s.p50_ms, s.p99_ms, s.calls, s.errors
        );
    }
    println!(
        "scaling {scaling:.2}x with {n} replicas on {} core(s)",
        std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(0)
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    Ok(())
}
