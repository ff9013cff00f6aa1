//! [`Daemon`]: one `hsmd dev` process on its own data folder, with connected clients.
//!
//! The daemon is started with `--listen 127.0.0.1:0`; it writes `DIR/client.toml` only
//! after its listener is bound, so the harness deletes that file before every start and
//! waits for it to reappear. The clients are built from the profile with tonic's own TLS
//! settings, independently of `hsm-client`; they and the other client helpers are those
//! of [`Instance`], which a `Daemon` dereferences to.

use std::{
    fs,
    ops::Deref,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use crate::instance::ADMIN_PRINCIPAL;
use crate::instance::{Instance, connect_admin};
pub use crate::profile::Profile;
use crate::token::TokenKind;
use crate::tools::{self, CmdOutput};

/// How long the daemon may take to provision its folder and bind.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the daemon is started.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// `hsmd dev --data-dir DIR --listen 127.0.0.1:0`; ready when `DIR/client.toml` appears.
    Dev,
    /// `hsmd serve --config FILE` on a data folder `hsmd dev` provisioned; ready when the
    /// endpoint (from the config's `listen`) accepts a connection. `profile` is a client
    /// profile the harness writes for hsmctl.
    Serve { config: PathBuf, profile: PathBuf },
}

/// A running `hsmd` with its temporary data folder. Dropping it stops the process.
pub struct Daemon {
    /// The TPM token's processes while `hsmd serve` runs on a TPM dev folder (under
    /// `hsmd dev` they are the daemon's own children). Dropped before the folder.
    pub(crate) tpm: Option<hsmd::dev::TpmToken>,
    pub(crate) inst: Instance,
    pub(crate) mode: Mode,
    pub(crate) child: Option<Child>,
    pub(crate) starts: u32,
    /// More `hsmd dev` arguments, given at every (re)start.
    pub(crate) dev_args: Vec<std::ffi::OsString>,
}

impl Deref for Daemon {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.inst
    }
}

impl Daemon {
    /// Starts a daemon on a fresh data folder and connects to it.
    pub async fn start() -> Daemon {
        Daemon::start_with(Vec::<std::ffi::OsString>::new()).await
    }

    /// Starts `hsmd dev` with more arguments (kept for restarts), e.g. `--kms-socket`.
    pub async fn start_with<I, S>(dev_args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        let mut daemon = Daemon {
            tpm: None,
            inst: Instance::fresh(),
            mode: Mode::Dev,
            child: None,
            starts: 0,
            dev_args: dev_args.into_iter().map(Into::into).collect(),
        };
        daemon.launch().await;
        daemon
    }

    /// The running hsmd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("hsmd is running").id()
    }

    /// The client profile hsmctl uses: `DIR/client.toml` under `hsmd dev`.
    pub fn profile_path(&self) -> PathBuf {
        match &self.mode {
            Mode::Dev => self.data_dir.join("client.toml"),
            Mode::Serve { profile, .. } => profile.clone(),
        }
    }

    fn stdout_path(&self) -> PathBuf {
        self.root().join(format!("hsmd-{}.stdout", self.starts))
    }

    fn stderr_path(&self) -> PathBuf {
        self.root().join(format!("hsmd-{}.stderr", self.starts))
    }

    /// What the current run printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    /// What the current run printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// A `hsmd` command with stdio going to this run's files and no inherited hsmd or
    /// SoftHSM2 settings: the daemon must find its own token config.
    pub(crate) fn hsmd_command(&self) -> Command {
        let stdout = fs::File::create(self.stdout_path()).expect("create stdout file");
        let stderr = fs::File::create(self.stderr_path()).expect("create stderr file");
        let mut cmd = Command::new(tools::workspace_bin("hsmd"));
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("NO_COLOR", "1")
            .env_remove("SOFTHSM2_CONF");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HSMD_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    pub(crate) async fn launch(&mut self) {
        self.starts += 1;
        let profile = match self.mode.clone() {
            Mode::Dev => {
                let profile_path = self.profile_path();
                match fs::remove_file(&profile_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("remove {}: {e}", profile_path.display()),
                }
                // `hsmd dev` starts the TPM token's processes itself.
                self.tpm = None;
                let mut cmd = self.hsmd_command();
                cmd.arg("dev")
                    .arg("--data-dir")
                    .arg(&self.data_dir)
                    .args(["--listen", "127.0.0.1:0"])
                    .args(&self.dev_args);
                // The token matrix: E2E_TOKEN chooses the token unless the test did.
                if !self.dev_args.iter().any(|a| a == "--token") {
                    cmd.args(TokenKind::under_test().dev_args());
                }
                self.child = Some(cmd.spawn().expect("spawn hsmd dev"));
                self.wait_for_profile().await
            }
            Mode::Serve { config, profile } => {
                // `hsmd serve` on a TPM folder: the harness runs the token's processes,
                // as an operator's service manager would, and hands hsmd their variables.
                if self.is_tpm() && self.tpm.is_none() {
                    let tpm = hsmd::dev::TpmToken::start(&self.data_dir)
                        .unwrap_or_else(|e| panic!("start the TPM token for hsmd serve: {e:#}"));
                    self.tpm = Some(tpm);
                }
                let mut cmd = self.hsmd_command();
                if let Some(tpm) = &self.tpm {
                    cmd.envs(tpm.env().iter().map(|(k, v)| (k, v)));
                }
                cmd.arg("serve").arg("--config").arg(&config);
                self.child = Some(cmd.spawn().expect("spawn hsmd serve"));
                let text = fs::read_to_string(&profile).expect("read serve profile");
                Profile::parse(&text).expect("serve profile")
            }
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let channel = loop {
            match connect_admin(&profile, |e| e).await {
                Ok(channel) => break channel,
                Err(e) => {
                    self.panic_if_exited();
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to {}: {e:?}\nhsmd stderr:\n{}",
                        profile.endpoint,
                        self.stderr_text()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.inst.profile = Some(profile);
        self.inst.channel = Some(channel);
    }

    fn panic_if_exited(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "hsmd exited early with {status}\nhsmd stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    async fn wait_for_profile(&mut self) -> Profile {
        let path = self.profile_path();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_problem = String::from("not written yet");
        loop {
            self.panic_if_exited();
            if let Ok(text) = fs::read_to_string(&path) {
                match Profile::parse(&text) {
                    Ok(profile) => return profile,
                    Err(problem) => last_problem = format!("{problem}:\n{text}"),
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not appear within {START_TIMEOUT:?} ({last_problem})\nhsmd stderr:\n{}",
                    path.display(),
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `hsmctl --profile DIR/client.toml ARGS...` and returns what it did.
    pub fn hsmctl<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        hsmctl_with(&self.profile_path(), &self.scratch(), args)
    }

    /// Like [`Daemon::hsmctl`] but panics unless it exits 0; returns trimmed stdout.
    pub fn hsmctl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let out = self.hsmctl(args);
        assert!(out.success(), "hsmctl failed\n{}", out.describe());
        out.stdout.trim().to_owned()
    }

    /// Stops the daemon with SIGTERM and asserts that it exits cleanly.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.inst.channel = None;
        terminate(&child);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for hsmd") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hsmd did not stop within {STOP_TIMEOUT:?} of SIGTERM\nhsmd stderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "hsmd exited with {status} on SIGTERM (expected a graceful exit 0)\nhsmd stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Kills the daemon with SIGKILL (no shutdown work at all), then starts it again on
    /// the same data folder and reconnects.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.inst.channel = None;
            let _ = child.kill();
            let _ = child.wait();
        }
        self.launch().await;
    }

    /// Starts the daemon again on the same data folder (after [`Daemon::stop`], or stops
    /// it first) and reconnects. The port changes.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

/// Runs `hsmctl --profile PROFILE ARGS...` in `cwd`, no profile from the environment.
pub(crate) fn hsmctl_with<I, S>(
    profile: &std::path::Path,
    cwd: &std::path::Path,
    args: I,
) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(tools::workspace_bin("hsmctl"));
    cmd.arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HSMCTL_PROFILE")
        .current_dir(cwd);
    tools::run_unchecked(&mut cmd)
}

/// SIGTERM, then SIGKILL if the child has not exited `within`; reaps it.
pub(crate) fn stop_within(mut child: Child, within: Duration) {
    terminate(&child);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_within(child, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            let stderr = self.stderr_text();
            let tail: Vec<&str> = stderr.lines().rev().take(80).collect();
            eprintln!(
                "---- hsmd data dir: {}\n---- last hsmd stderr lines (run {}):",
                self.data_dir.display(),
                self.starts
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
