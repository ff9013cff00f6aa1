//! `hsmd-bench`: what does hsmd cost? One command provisions a dev token (or reuses a
//! data folder), starts the real daemon as a child process on it and sets up the same
//! operation in-process with cryptoki directly on the same token, then measures the two
//! in rounds — hsmd through hsm-client over mTLS (audit with fsync on) and raw, taking
//! turns going first — so a shared machine's drift falls on both sides alike, and prints
//! both, pooled over the rounds, with the ratio.

mod audit;
mod disk;
mod floor;
mod kms;
mod pin;
mod raw;
mod replicas;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hsm_client::bench::{self, BenchOp, BenchSpec, Length, Samples};
use hsm_client::v1::{CreateKeyRequest, KeySpec as PbKeySpec, KeyUsage, SigningAlgorithm as PbAlg};
use hsm_client::{Client, Profile};
use hsmd::domain::spec::{KeySpec, SigningAlgorithm};

#[derive(Parser)]
#[command(
    name = "hsmd-bench",
    version,
    about = "hsmd throughput and latency against raw PKCS#11 on the same token, in one run"
)]
struct Args {
    /// Data folder of a dev token to reuse (default: a fresh temporary one).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Operation. decrypt: RSAES_OAEP_SHA_1 with an RSA key of --spec; encrypt and
    /// generate-data-key: an AES_256 key (--spec is ignored).
    #[arg(long, value_enum, default_value = "sign")]
    op: BenchOp,
    /// Key spec (RSA_2048, EC_P256, ...).
    #[arg(long, default_value = "RSA_2048")]
    spec: String,
    /// Signing algorithm (RSA_PKCS1_SHA_256, ECDSA_SHA_256, ...).
    #[arg(long, default_value = "RSA_PKCS1_SHA_256")]
    algorithm: String,
    /// Calls in flight (hsmd) and threads with one session each (raw).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2 connections to hsmd.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured duration of each side, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    duration: Duration,
    /// Measure this many calls per side instead of a duration.
    #[arg(long)]
    calls: Option<u64>,
    /// Rounds the measured duration (or calls) of each side is split into, the sides
    /// taking turns (hsmd then raw, raw then hsmd, ...). Each round's ratio is reported
    /// beside the pooled one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Unmeasured warm-up of each side.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    warmup: Duration,
    /// Other EC_P256 keys to create in the token first (lookup costs must stay flat).
    #[arg(long, default_value_t = 0)]
    extra_keys: usize,
    /// hsmd side: sign over the SignStream RPC (one stream per connection).
    #[arg(long)]
    stream: bool,
    /// hsmd side of --op encrypt: the Kubernetes KMS v2 plugin's Encrypt over its Unix
    /// socket (the API server's hot path) instead of KeyService Encrypt over mTLS.
    #[arg(long)]
    kms: bool,
    /// Pin the load generator to the last CPU and both measured sides (the raw threads
    /// and the hsmd process) to the others, so the client's CPU leaves the ratio; the
    /// report then also gives each side's CPU per call and hsmd's overhead per call.
    /// Default: on with 2 or more CPUs; --pin=false for the unpinned figure.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pin: Option<bool>,
    /// Also measure the floors in each round: the transport's (gRPC health checks on
    /// the same daemon, connections and CPUs: TLS, HTTP/2, tonic; no token, no audit),
    /// the disk's (1000 durable writes of 4 KiB, pwrite + fdatasync, on hsmd's CPUs,
    /// shared by the records per sync the daemon's /metrics report) and the idle one
    /// (raw's token work on one session, pausing one durable write's wall time after
    /// each group's worth of calls, less the same work without pauses: what the CPU
    /// idling once per group costs the token work). Reports the CPU of each and hsmd's
    /// overhead above them.
    #[arg(long)]
    floor: bool,
    /// Compare one replica with this many on the same token, with their metadata in a
    /// private PostgreSQL (started and stopped by the run): the same load against one
    /// replica and spread over all, in alternating rounds, with the scaling factor. No
    /// raw side in this mode.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=8))]
    replicas: Option<u16>,
    /// Output: table or json.
    #[arg(short, long, default_value = "table")]
    output: String,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = n.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in '{s}' (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("audit") {
        return audit::main();
    }
    let args = Args::parse();
    let (spec, algorithm) = checked(&args)?;
    if let Some(n) = args.replicas {
        return replicas::run(&args, spec, algorithm, n);
    }
    let plan = match args.pin {
        Some(false) => None,
        Some(true) => Some(pin::Plan::current()?),
        None => pin::Plan::current().ok(),
    };
    if let Some(p) = &plan {
        // Before any thread exists: the runtime's threads inherit the client CPU.
        pin::pin_current_thread(&p.client).context("pin the load generator")?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    // Provisioning sets SOFTHSM2_CONF for this process: before any thread exists.
    let config_path = hsmd::dev::provision(&dir, "127.0.0.1:0")?;
    let config = hsmd::config::Config::load(&config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work_cpus = plan.as_ref().map(|p| p.work.clone());
    let side = runtime.block_on(HsmdSide::start(
        &args,
        &dir,
        spec,
        algorithm,
        work_cpus.clone(),
    ))?;
    let raw_spec = raw::RawSpec {
        op: args.op,
        spec,
        algorithm,
        threads: args.concurrency,
        work_cpus,
    };
    let mut raw = raw::RawBench::open(&config, &raw_spec)?;
    let run = run_rounds(
        &args,
        &runtime,
        &side,
        &mut raw,
        raw_spec.work_cpus.as_deref(),
    )?;
    raw.close()?;
    let rss = side.stop();
    report(&args, spec, algorithm, &run, rss, plan.as_ref());
    Ok(())
}

/// Refuses flag combinations that cannot run; the key spec and algorithm to use.
fn checked(args: &Args) -> anyhow::Result<(KeySpec, SigningAlgorithm)> {
    if args.stream && args.op != BenchOp::Sign {
        bail!("--stream works with --op sign only");
    }
    if args.kms && args.op != BenchOp::Encrypt {
        bail!("--kms works with --op encrypt only");
    }
    if args.replicas.is_some() && (args.kms || args.floor || args.extra_keys > 0) {
        bail!("--replicas compares replicas only: no --kms, --floor or --extra-keys");
    }
    if args.calls.is_some_and(|n| n < u64::from(args.rounds)) {
        bail!("--calls must be at least --rounds (each round measures some calls)");
    }
    let spec = KeySpec::from_name(&args.spec.to_uppercase()).context("--spec: unknown key spec")?;
    let spec = op_spec(args.op, spec);
    if args.op == BenchOp::Decrypt && spec.rsa_bits().is_none() {
        bail!("--op decrypt needs an RSA --spec (RSA-OAEP decryption)");
    }
    let algorithm = SigningAlgorithm::from_name(&args.algorithm.to_uppercase())
        .context("--algorithm: unknown")?;
    Ok((spec, algorithm))
}

/// Both sides over every round, pooled, with each round's ratio.
struct Run {
    raw: Samples,
    hsmd: Samples,
    /// CPU time of the token work over the measured parts: the raw threads, the hsmd
    /// process.
    raw_cpu: Duration,
    hsmd_cpu: Duration,
    /// With --floor: the health checks and the daemon's CPU over them.
    floor: Samples,
    floor_cpu: Duration,
    /// With --floor: durable writes on their own (`disk`) and the thread CPU they took,
    /// and the daemon's audit groups over its measured parts.
    disk_syncs: u64,
    disk_cpu: Duration,
    /// Wall time of those durable writes: how long hsmd's CPU idles per group.
    disk_wall: Duration,
    groups: disk::AuditGroups,
    /// With --floor: raw's token work on one session with and without a pause of one
    /// durable write after each group's worth of calls, and the pauses made.
    idle: raw::IdleCost,
    pause_every: Vec<u64>,
    rounds: Vec<Round>,
    first_error: Option<String>,
}

impl Run {
    fn raw_cpu_us(&self) -> f64 {
        pin::us_per_call(self.raw_cpu, self.raw.micros.len() as u64)
    }

    fn hsmd_cpu_us(&self) -> f64 {
        pin::us_per_call(self.hsmd_cpu, self.hsmd.micros.len() as u64)
    }

    fn floor_cpu_us(&self) -> f64 {
        pin::us_per_call(self.floor_cpu, self.floor.micros.len() as u64)
    }

    /// CPU of one durable write on its own.
    fn disk_cpu_us_per_sync(&self) -> f64 {
        pin::us_per_call(self.disk_cpu, self.disk_syncs)
    }

    /// Records hsmd made durable per group write (0 without any).
    fn records_per_sync(&self) -> f64 {
        if self.groups.syncs > 0.0 {
            self.groups.records / self.groups.syncs
        } else {
            0.0
        }
    }

    /// The disk's floor per call: one durable write shared by the records of a group.
    fn disk_floor_us_per_call(&self) -> f64 {
        match self.records_per_sync() {
            n if n > 0.0 => self.disk_cpu_us_per_sync() / n,
            _ => 0.0,
        }
    }

    /// Wall time of one durable write on its own: the pause of the idle floor.
    fn pause(&self) -> Duration {
        self.disk_wall / u32::try_from(self.disk_syncs.max(1)).unwrap_or(u32::MAX)
    }

    /// The idle floor per call: raw's token work pausing once per group, less the same
    /// work without pauses (`None` before any paused call).
    fn idle_floor_us_per_call(&self) -> Option<(f64, f64, f64)> {
        let (steady, paused) = (self.idle.steady, self.idle.paused);
        if steady.1 == 0 || paused.1 == 0 {
            return None;
        }
        let (s, p) = (
            pin::us_per_call(steady.0, steady.1),
            pin::us_per_call(paused.0, paused.1),
        );
        Some((s, p, p - s))
    }
}

/// Durable writes the disk floor makes in each round (about 0.2 s on this machine's disk).
const DISK_SYNCS_PER_ROUND: u64 = 1000;

/// Measures raw and hsmd in `args.rounds` alternating rounds (the warm-up only in the
/// first).
fn run_rounds(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    side: &HsmdSide,
    raw: &mut raw::RawBench,
    work_cpus: Option<&[usize]>,
) -> anyhow::Result<Run> {
    let length = args
        .calls
        .map(Length::Calls)
        .unwrap_or(Length::Duration(args.duration));
    let mut run = Run {
        raw: Samples::default(),
        hsmd: Samples::default(),
        raw_cpu: Duration::ZERO,
        hsmd_cpu: Duration::ZERO,
        floor: Samples::default(),
        floor_cpu: Duration::ZERO,
        disk_syncs: 0,
        disk_cpu: Duration::ZERO,
        disk_wall: Duration::ZERO,
        groups: disk::AuditGroups::default(),
        idle: raw::IdleCost::default(),
        pause_every: Vec::new(),
        rounds: Vec::new(),
        first_error: None,
    };
    for round in 0..args.rounds {
        let warmup = if round == 0 {
            args.warmup
        } else {
            Duration::ZERO
        };
        let slice = slice_of(length, round, args.rounds);
        let drive_hsmd = |warmup: Duration, slice: Length| match &side.kms {
            Some(kms) => runtime.block_on(kms::measure(kms, args.concurrency, warmup, slice)),
            None => runtime.block_on(bench::measure(
                &side.clients,
                &side.spec,
                &side.prepared,
                warmup,
                slice,
            )),
        };
        // The warm-up on its own, so the daemon's CPU is read around the measured part.
        let measure_hsmd =
            || -> anyhow::Result<(Samples, Option<String>, Duration, Option<disk::AuditGroups>)> {
                if !warmup.is_zero() {
                    drive_hsmd(Duration::ZERO, Length::Duration(warmup));
                }
                let groups = side.audit_groups()?;
                let before = pin::process_cpu(side.daemon.pid())?;
                let (samples, err) = drive_hsmd(Duration::ZERO, slice);
                let cpu = pin::process_cpu(side.daemon.pid())? - before;
                let groups = match groups {
                    Some(before) => {
                        Some(side.audit_groups()?.context("no /metrics")?.since(before))
                    }
                    None => None,
                };
                Ok((samples, err, cpu, groups))
            };
        // The sides take turns going first (hsmd-raw, raw-hsmd, ...), so whatever one
        // leaves behind (the daemon's last fsyncs) or a drift within a round does not
        // always fall on the same side.
        let ((r, r_cpu), (h, err, h_cpu, groups)) = if round % 2 == 0 {
            let h = measure_hsmd()?;
            (raw.measure(warmup, slice)?, h)
        } else {
            let r = raw.measure(warmup, slice)?;
            (r, measure_hsmd()?)
        };
        run.first_error = run.first_error.or(err);
        if let Some(g) = groups {
            run.groups.syncs += g.syncs;
            run.groups.records += g.records;
        }
        run.rounds.push(Round::of(&r, &h, r_cpu, h_cpu));
        run.raw.add(r);
        run.hsmd.add(h);
        run.raw_cpu += r_cpu;
        run.hsmd_cpu += h_cpu;
        if args.floor {
            let before = pin::process_cpu(side.daemon.pid())?;
            let f = runtime.block_on(floor::measure(&side.clients, args.concurrency, slice));
            run.floor_cpu += pin::process_cpu(side.daemon.pid())? - before;
            run.floor.add(f);
            let (cpu, wall) = disk::measure(&side.dir, work_cpus, DISK_SYNCS_PER_ROUND)?;
            run.disk_cpu += cpu;
            run.disk_wall += wall;
            run.disk_syncs += DISK_SYNCS_PER_ROUND;
            // hsmd's group size this round: its CPU idles once per group, for a sync.
            if let Some(g) = groups.filter(|g| g.syncs > 0.0) {
                let every = (g.records / g.syncs).round().max(1.0) as u64;
                let pause = raw::Pause {
                    every,
                    each: wall / u32::try_from(DISK_SYNCS_PER_ROUND).unwrap_or(u32::MAX),
                };
                run.idle.add(raw.idle_cost(slice, pause, round % 2 == 1)?);
                run.pause_every.push(every);
            }
        }
    }
    Ok(run)
}

/// Prints the run as a table for people or one JSON object (`-o json`).
fn report(
    args: &Args,
    spec: KeySpec,
    algorithm: SigningAlgorithm,
    run: &Run,
    rss: u64,
    plan: Option<&pin::Plan>,
) {
    let (raw_stats, hsmd_stats) = (run.raw.stats(), run.hsmd.stats());
    let ratio = if raw_stats.ops_per_sec > 0.0 {
        hsmd_stats.ops_per_sec / raw_stats.ops_per_sec
    } else {
        0.0
    };
    let (raw_cpu, hsmd_cpu) = (run.raw_cpu_us(), run.hsmd_cpu_us());
    let overhead = hsmd_cpu - raw_cpu;
    let overheads: Vec<f64> = run.rounds.iter().map(|r| r.overhead_us()).collect();
    let idle_floor = run.idle_floor_us_per_call();
    if args.output == "json" {
        let side = |stats: &bench::LatencyStats, cpu: f64| {
            let mut v = serde_json::to_value(stats).unwrap_or_default();
            v["cpu_us_per_call"] = serde_json::json!(cpu);
            v
        };
        let v = serde_json::json!({
            "op": args.op, "spec": spec.name(), "algorithm": alg_name(args.op, algorithm),
            "concurrency": args.concurrency, "connections": args.connections, "extra_keys": args.extra_keys,
            "stream": args.stream, "kms": args.kms,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "pin": plan.is_some(),
            "client_cpus": plan.map(|p| p.client.clone()),
            "work_cpus": plan.map(|p| p.work.clone()),
            "raw": side(&raw_stats, raw_cpu), "hsmd": side(&hsmd_stats, hsmd_cpu),
            "ratio": ratio, "overhead_us_per_call": overhead,
            "overhead_us_per_call_rounds": overheads,
            "floor": args.floor.then(|| serde_json::json!({
                "method": "grpc.health.v1.Health/Check",
                "ops_per_sec": run.floor.stats().ops_per_sec,
                "cpu_us_per_call": run.floor_cpu_us(),
                "errors": run.floor.errors,
            })),
            "overhead_above_floor_us_per_call": args.floor.then(|| overhead - run.floor_cpu_us()),
            "disk_floor": args.floor.then(|| serde_json::json!({
                "method": format!("pwrite {} B + fdatasync, zero-filled file in the data folder", disk::WRITE_BYTES),
                "syncs": run.disk_syncs,
                "cpu_us_per_sync": run.disk_cpu_us_per_sync(),
                "hsmd_syncs": run.groups.syncs,
                "hsmd_records_per_sync": run.records_per_sync(),
                "cpu_us_per_call": run.disk_floor_us_per_call(),
            })),
            "overhead_above_floors_us_per_call": args.floor
                .then(|| overhead - run.floor_cpu_us() - run.disk_floor_us_per_call()),
            "idle_floor": idle_floor.map(|(steady, paused, idle)| serde_json::json!({
                "method": "raw's token work on one session, pausing one durable write's wall time after each hsmd audit group's worth of calls, less the same work without pauses",
                "calls_per_pause": run.pause_every,
                "pause_us": run.pause().as_secs_f64() * 1e6,
                "steady_cpu_us_per_call": steady,
                "paused_cpu_us_per_call": paused,
                "cpu_us_per_call": idle,
            })),
            "overhead_above_all_floors_us_per_call": idle_floor.map(|(_, _, idle)| {
                overhead - run.floor_cpu_us() - run.disk_floor_us_per_call() - idle
            }),
            "hsmd_peak_rss_kib": rss,
            "rounds": run.rounds.iter().map(Round::json).collect::<Vec<_>>(),
            "first_error": run.first_error,
        });
        println!("{v}");
        return;
    }
    println!(
        "{} {} {} concurrency {} ({} connection(s){}), {} extra keys",
        args.op_name(),
        spec,
        alg_name(args.op, algorithm),
        args.concurrency,
        args.connections,
        if args.stream {
            ", SignStream"
        } else if args.kms {
            ", KMS v2 plugin over its Unix socket"
        } else {
            ""
        },
        args.extra_keys
    );
    print!(
        "{}",
        bench::table(&[("raw", &raw_stats), ("hsmd", &hsmd_stats)])
    );
    println!("ratio hsmd/raw: {ratio:.3}   hsmd peak RSS: {rss} KiB");
    match plan {
        Some(p) => println!(
            "pinned: load generator on CPU {:?}, raw threads and hsmd on CPU {:?}",
            p.client, p.work
        ),
        None => println!("not pinned: load generator, raw threads and hsmd share every CPU"),
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        if v.is_empty() { (0.0, 0.0) } else { (lo, hi) }
    };
    let (lo, hi) = spread(&overheads);
    println!(
        "CPU per call: raw {raw_cpu:.1} us, hsmd {hsmd_cpu:.1} us; hsmd overhead {overhead:.1} us per call (rounds {lo:.1}..{hi:.1})"
    );
    if args.floor {
        let f = run.floor_cpu_us();
        println!(
            "transport floor (health checks, {:.0}/s): {f:.1} us of hsmd CPU per call; hsmd overhead above it {:.1} us",
            run.floor.stats().ops_per_sec,
            overhead - f
        );
        let d = run.disk_floor_us_per_call();
        println!(
            "disk floor ({} x pwrite {} B + fdatasync): {:.1} us of CPU per sync; hsmd made {:.1} records durable per sync: {d:.1} us per call; hsmd overhead above both floors {:.1} us",
            run.disk_syncs,
            disk::WRITE_BYTES,
            run.disk_cpu_us_per_sync(),
            run.records_per_sync(),
            overhead - f - d
        );
        if let Some((steady, paused, idle)) = idle_floor {
            println!(
                "idle floor (raw, one session, a {:.0} us pause per {:?} calls): {paused:.1} against {steady:.1} us per call without: {idle:.1} us per call; hsmd overhead above all three floors {:.1} us",
                run.pause().as_secs_f64() * 1e6,
                run.pause_every,
                overhead - f - d - idle
            );
        }
    }
    if run.rounds.len() > 1 {
        let each: Vec<String> = run
            .rounds
            .iter()
            .map(|r| format!("{:.3}", r.ratio))
            .collect();
        println!("ratio per round: {}", each.join(" "));
    }
    if let Some(e) = &run.first_error {
        println!("first hsmd error: {e}");
    }
}

impl Args {
    fn op_name(&self) -> &'static str {
        self.op.name()
    }
}

/// The algorithm an operation runs with, for the report.
fn alg_name(op: BenchOp, signing: SigningAlgorithm) -> &'static str {
    match op {
        BenchOp::Decrypt => "RSAES_OAEP_SHA_1",
        BenchOp::Encrypt | BenchOp::GenerateDataKey => "SYMMETRIC_DEFAULT",
        _ => signing.name(),
    }
}

/// The key spec an operation runs with: encrypt and generate-data-key need an AES_256
/// key whatever --spec says; the others use --spec.
fn op_spec(op: BenchOp, spec: KeySpec) -> KeySpec {
    match op {
        BenchOp::Encrypt | BenchOp::GenerateDataKey => KeySpec::Aes256,
        _ => spec,
    }
}

/// One round's throughput on each side.
struct Round {
    raw_ops_per_sec: f64,
    hsmd_ops_per_sec: f64,
    ratio: f64,
    raw_cpu_us_per_call: f64,
    hsmd_cpu_us_per_call: f64,
}

impl Round {
    fn of(raw: &Samples, hsmd: &Samples, raw_cpu: Duration, hsmd_cpu: Duration) -> Round {
        let (r, h) = (raw.stats().ops_per_sec, hsmd.stats().ops_per_sec);
        Round {
            raw_ops_per_sec: r,
            hsmd_ops_per_sec: h,
            ratio: if r > 0.0 { h / r } else { 0.0 },
            raw_cpu_us_per_call: pin::us_per_call(raw_cpu, raw.micros.len() as u64),
            hsmd_cpu_us_per_call: pin::us_per_call(hsmd_cpu, hsmd.micros.len() as u64),
        }
    }

    /// hsmd's CPU per call beyond raw's, microseconds.
    fn overhead_us(&self) -> f64 {
        self.hsmd_cpu_us_per_call - self.raw_cpu_us_per_call
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "raw_ops_per_sec": self.raw_ops_per_sec,
            "hsmd_ops_per_sec": self.hsmd_ops_per_sec,
            "ratio": self.ratio,
            "raw_cpu_us_per_call": self.raw_cpu_us_per_call,
            "hsmd_cpu_us_per_call": self.hsmd_cpu_us_per_call,
            "overhead_us_per_call": self.overhead_us(),
        })
    }
}

/// Round `i`'s share of the measured length: an equal slice of the duration, or of the
/// calls (the first rounds take the remainder, so the total is exact).
fn slice_of(length: Length, i: u32, rounds: u32) -> Length {
    match length {
        Length::Duration(d) => Length::Duration(d / rounds),
        Length::Calls(n) => {
            let (each, extra) = (n / u64::from(rounds), n % u64::from(rounds));
            Length::Calls(each + u64::from(u64::from(i) < extra))
        }
    }
}

/// The daemon side of the run: the child process, its connections, the key and what
/// the calls need.
struct HsmdSide {
    daemon: Daemon,
    /// The daemon's data folder (its audit log is there).
    dir: PathBuf,
    /// HOST:PORT of its `/metrics` (with --floor).
    metrics: Option<String>,
    clients: Vec<Client>,
    /// With --kms: the plugin client (the calls go there instead).
    kms: Option<
        hsmd_proto::kms_v2::key_management_service_client::KeyManagementServiceClient<
            tonic::transport::Channel,
        >,
    >,
    spec: BenchSpec,
    prepared: bench::Prepared,
}

impl HsmdSide {
    /// Starts the daemon, connects, and makes the keys.
    async fn start(
        args: &Args,
        dir: &Path,
        spec: KeySpec,
        algorithm: SigningAlgorithm,
        work_cpus: Option<Vec<usize>>,
    ) -> anyhow::Result<HsmdSide> {
        let socket = dir.join("kms.sock");
        let daemon = Daemon::start(
            dir,
            args.kms.then_some(socket.as_path()),
            args.floor,
            work_cpus,
        )?;
        let profile = Profile::load(dir.join("client.toml"))?;
        let metrics = match args.floor {
            true => Some(
                profile
                    .metrics_endpoint
                    .as_deref()
                    .and_then(|e| e.strip_prefix("http://"))
                    .context("hsmd dev wrote no metrics_endpoint")?
                    .to_string(),
            ),
            false => None,
        };
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(Client::connect(&profile).await?);
        }
        make_extra_keys(&clients[0], args.extra_keys).await?;
        let spec = bench_spec(&clients[0], args, spec, algorithm).await?;
        let prepared = bench::prepare(&clients, &spec).await?;
        let kms = match args.kms {
            true => Some(kms::connect(&socket).await?),
            false => None,
        };
        Ok(HsmdSide {
            daemon,
            dir: dir.to_path_buf(),
            metrics,
            clients,
            kms,
            spec,
            prepared,
        })
    }

    /// The audit writer's group writes so far, when the metrics are on.
    fn audit_groups(&self) -> anyhow::Result<Option<disk::AuditGroups>> {
        self.metrics
            .as_deref()
            .map(disk::AuditGroups::scrape)
            .transpose()
    }

    /// Reads the daemon's peak RSS (KiB) and stops it.
    fn stop(mut self) -> u64 {
        let rss = self.daemon.peak_rss_kib();
        drop(self.clients);
        self.daemon.stop();
        rss
    }
}

/// Creates the key the calls use (through `client`) and describes the calls.
async fn bench_spec(
    client: &Client,
    args: &Args,
    spec: KeySpec,
    algorithm: SigningAlgorithm,
) -> anyhow::Result<BenchSpec> {
    let usage = if args.op.encrypts() {
        KeyUsage::EncryptDecrypt
    } else {
        KeyUsage::SignVerify
    };
    let key = client
        .create_key(CreateKeyRequest {
            spec: PbKeySpec::from_str_name(spec.name()).context("spec")? as i32,
            usage: usage as i32,
            ..Default::default()
        })
        .await?;
    Ok(BenchSpec {
        op: args.op,
        key_id: key.key_id,
        algorithm: PbAlg::from_str_name(algorithm.name()).context("algorithm")?,
        concurrency: args.concurrency.max(1),
        length: Length::Calls(0),
        warmup: Duration::ZERO,
        stream: args.stream,
    })
}

async fn make_extra_keys(client: &Client, n: usize) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = client.clone();
        tasks.spawn(async move {
            c.create_key(CreateKeyRequest {
                spec: PbKeySpec::EcP256 as i32,
                usage: KeyUsage::SignVerify as i32,
                description: format!("bench filler {i}"),
                ..Default::default()
            })
            .await
        });
        if tasks.len() >= 8
            && let Some(r) = tasks.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The hsmd child process.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// `hsmd dev` on `dir`, with the KMS plugin on `kms_socket` when given, its
    /// `/metrics` on a free port with `metrics`, and every thread of it on `cpus` when
    /// given.
    fn start(
        dir: &Path,
        kms_socket: Option<&Path>,
        metrics: bool,
        cpus: Option<Vec<usize>>,
    ) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe()?.with_file_name("hsmd");
        if !exe.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p hsmd)",
                exe.display()
            );
        }
        let profile = dir.join("client.toml");
        let _ = std::fs::remove_file(&profile);
        let mut cmd = Command::new(&exe);
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir);
        if let Some(socket) = kms_socket {
            cmd.arg("--kms-socket").arg(socket);
        }
        if metrics {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if let Some(cpus) = cpus {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec; sched_setaffinity is a
            // plain system call (async-signal-safe), and the CPU list was built before
            // the fork. Every thread hsmd starts inherits the affinity.
            unsafe {
                cmd.pre_exec(move || pin::pin_current_thread(&cpus).map_err(std::io::Error::from));
            }
        }
        let child = cmd
            .env("RUST_LOG", "warn,cryptoki::mechanism=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let mut daemon = Daemon { child };
        let start = Instant::now();
        while !profile.exists() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("hsmd exited during start-up: {status}");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("hsmd did not write {} within 60 s", profile.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmHWM of the child, KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Stops an hsmd child: SIGTERM, then SIGKILL if it has not exited within 10 s.
fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
