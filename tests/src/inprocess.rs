//! [`InProcess`]: the hsmd server library run inside the test process on a clock the test
//! moves ([`ManualClock`]), for the tests about dates: deletion windows, material that
//! expires. Nobody waits seven days and nobody edits the metadata store: the test
//! advances the clock and the lifecycle sweep, every [`SWEEP_INTERVAL`], does the rest.
//!
//! The folder is provisioned as `hsmd dev` does it (`hsmd::dev::provision`, its config,
//! port 0, the client profile written once bound), so the client helpers are those of
//! [`Instance`], the same as a [`crate::Daemon`]'s. The dev, restart, CLI and interop
//! tests keep running the real binary.
//!
//! # Restriction: the only token user of its test binary
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, cryptoki's `C_Initialize` holds for
//! the whole process, and provisioning sets `SOFTHSM2_CONF` with `set_var`, which is
//! unsound while another thread reads the environment. So a test that uses `InProcess`
//! sits in a test file of its own (each file under `tests/tests` is one binary) with no
//! other test in it; [`InProcess::start`] panics if a second one starts in the same
//! process. Daemons started with [`crate::Daemon`] or `pkcs11-tool` runs are separate
//! processes and do not count.
//!
//! The test runs on a multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`,
//! checked at start): dropping the harness blocks the test's thread until the server
//! has drained, and the client connections must close meanwhile on another thread.

use std::{
    fs,
    net::SocketAddr,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub use hsmd::clock::{Clock, ManualClock};
use tokio::sync::oneshot;

use crate::daemon::START_TIMEOUT;
use crate::instance::{Instance, connect_admin};
use crate::profile::Profile;
use crate::token::TokenKind;

/// How often the in-process daemon's lifecycle task sweeps (the config's minimum is a
/// second; tests want it sooner after they move the clock).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// One day in seconds, the unit tests move the clock by.
pub const DAY: i64 = 86_400;

/// How long the server's blocking tasks may take to finish once it stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// An hsmd server running on a thread (and tokio runtime) of its own in this process,
/// with a temporary `hsmd dev` folder. Dereferences to its [`Instance`] for the clients;
/// dropping it stops the server gracefully (the audit log is sealed) and removes the
/// folder.
pub struct InProcess {
    inst: Instance,
    clock: Arc<ManualClock>,
    /// The registry webhook's address, when started with a registry.
    webhook: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), String>>>,
    /// The TPM token's processes under `E2E_TOKEN=tpm`; dropped after the server.
    _tpm: Option<hsmd::dev::TpmToken>,
}

impl Deref for InProcess {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.inst
    }
}

impl InProcess {
    /// Provisions a fresh dev folder, starts the server on a [`ManualClock`] (at the
    /// system time) and connects as the dev admin. See the module doc: once per binary.
    pub async fn start() -> InProcess {
        Self::start_with(None).await
    }

    /// As [`start`](Self::start), signing images in `registry` and listening for its
    /// pushes on its webhook ([`webhook_url`](Self::webhook_url)).
    pub async fn start_with_registry(registry: hsmd::dev::DevRegistry) -> InProcess {
        Self::start_with(Some(registry)).await
    }

    async fn start_with(registry: Option<hsmd::dev::DevRegistry>) -> InProcess {
        static STARTED: AtomicBool = AtomicBool::new(false);
        assert!(
            !STARTED.swap(true, Ordering::SeqCst),
            "a second in-process hsmd in one test binary: SoftHSM2 and cryptoki are set up \
             once per process; give this test a file of its own under tests/tests"
        );
        assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread,
            "an InProcess test needs #[tokio::test(flavor = \"multi_thread\")]: its clients' \
             connections must close while the harness waits for the server to stop"
        );
        let mut inst = Instance::fresh();
        // Sets SOFTHSM2_CONF (or the TPM token's variables) for this process: the token
        // of this folder is its only one.
        let options = hsmd::dev::DevOptions {
            token: match TokenKind::under_test() {
                TokenKind::SoftHsm => hsmd::dev::DevToken::Softhsm,
                TokenKind::Tpm => hsmd::dev::DevToken::Tpm,
            },
            registry,
            ..Default::default()
        };
        let hsmd::dev::Provisioned { config, tpm } =
            hsmd::dev::provision_with(&inst.data_dir, "127.0.0.1:0", &options)
                .unwrap_or_else(|e| panic!("provision {}: {e:#}", inst.data_dir.display()));
        let mut cfg = hsmd::config::Config::load(&config)
            .unwrap_or_else(|e| panic!("load {}: {e:#}", config.display()));
        cfg.sweep_interval = SWEEP_INTERVAL;
        let clock = ManualClock::new();
        let (bound_tx, bound_rx) = oneshot::channel::<Option<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let dir = inst.data_dir.clone();
        let server_clock = clock.clone();
        let server = std::thread::Builder::new()
            .name("hsmd-in-process".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?;
                let on_bound = move |bound: hsmd::server::Bound| {
                    hsmd::dev::write_profile(
                        &dir,
                        hsmd::dev::Listening {
                            grpc: bound.grpc,
                            metrics: bound.metrics,
                            webhook: bound.webhook,
                        },
                    )?;
                    let _ = bound_tx.send(bound.webhook);
                    Ok(())
                };
                let stopped = || async move {
                    let _ = stop_rx.await;
                };
                let result = runtime.block_on(hsmd::server::run_until(
                    cfg,
                    server_clock,
                    on_bound,
                    stopped,
                ));
                runtime.shutdown_timeout(STOP_TIMEOUT);
                result.map_err(|e| format!("{e:#}"))
            })
            .expect("spawn the in-process hsmd thread");
        let webhook = match tokio::time::timeout(START_TIMEOUT, bound_rx).await {
            Ok(Ok(webhook)) => webhook,
            Ok(Err(_)) => {
                let why = match server.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "it stopped without an error".into(),
                    Err(_) => "its thread panicked".into(),
                };
                panic!("the in-process hsmd did not start: {why}");
            }
            Err(_) => panic!("the in-process hsmd did not bind within {START_TIMEOUT:?}"),
        };
        let path = inst.data_dir.join("client.toml");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let profile = Profile::parse(&text).expect("client profile");
        let channel = connect_admin(&profile, |e| e)
            .await
            .unwrap_or_else(|e| panic!("connect to the in-process hsmd: {e:?}"));
        inst.profile = Some(profile);
        inst.channel = Some(channel);
        InProcess {
            inst,
            clock,
            webhook,
            stop: Some(stop_tx),
            server: Some(server),
            _tpm: tpm,
        }
    }

    /// The daemon's clock: `advance(secs)` and `set(unix_secs)` move it.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// `http://ADDR/registry/events`, the registry webhook (started with a registry).
    pub fn webhook_url(&self) -> String {
        let addr = self
            .webhook
            .expect("no webhook: start the harness with start_with_registry");
        format!("http://{addr}/registry/events")
    }

    /// The daemon's current time, unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.inst.channel = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(server) = self.server.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while !server.is_finished() {
            if std::time::Instant::now() > deadline {
                return eprintln!(
                    "---- the in-process hsmd did not stop within {STOP_TIMEOUT:?}; left running"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match server.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("---- the in-process hsmd stopped with an error: {e}"),
            Err(_) => eprintln!("---- the in-process hsmd thread panicked"),
        }
    }
}
