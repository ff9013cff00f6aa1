//! `hsmd dev --token tpm`: a TPM-backed PKCS#11 token (tpm2-pkcs11) on a software TPM,
//! in a private folder, for development and the end-to-end tests.
//!
//! Three processes, all children of this hsmd and started with a parent-death signal, so
//! they end with it even when it is killed: `swtpm` (the TPM 2.0 simulator, on two free
//! loopback ports), a private `dbus-daemon --session` and `tpm2-abrmd` (the resource
//! manager: without it the TPM runs out of object slots at once). Nothing system-wide is
//! touched. The token store (tpm2-pkcs11's SQLite file) and the TPM state live under
//! `DIR/tpm`; a second start reuses both. `DIR/tpm/env` holds the environment that other
//! tools (pkcs11-tool, tpm2_ptool) need to reach the same token while hsmd runs.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use secrecy::ExposeSecret;

use super::{DEV_TOKEN_LABEL, random_pin, write_secret};

/// Where Debian puts the tpm2-pkcs11 module.
pub(crate) const TPM_MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/pkcs11/libtpm2_pkcs11.so",
];
/// The Debian packages of the TPM token.
pub const TPM_PACKAGES: &[&str] = &[
    "libtpm2-pkcs11-1",
    "libtpm2-pkcs11-tools",
    "swtpm",
    "tpm2-abrmd",
    "libtss2-tcti-tabrmd0",
    "dbus",
];
const TOOLS: &[&str] = &[
    "swtpm",
    "dbus-daemon",
    "dbus-send",
    "tpm2-abrmd",
    "tpm2_ptool",
];
/// The TCTI through which tpm2-pkcs11 and tpm2-tools reach tpm2-abrmd.
const TABRMD_TCTI: &str = "tabrmd:bus_type=session";
/// Loaded transient objects tpm2-abrmd allows one client (its maximum).
pub(crate) const ABRMD_MAX_TRANSIENTS: u32 = 100;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The running TPM token: its processes and the environment its module needs. Dropping
/// it stops the processes (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct TpmToken {
    /// Kept in start order; stopped in reverse.
    children: Vec<(&'static str, Child)>,
    /// dbus-daemon's stdout, held open so it never writes to a closed pipe.
    _bus_stdout: Option<ChildStdout>,
    module: PathBuf,
    env: Vec<(&'static str, String)>,
    /// swtpm's server port (its control port is the next one).
    port: u16,
}

impl TpmToken {
    /// Starts swtpm, a private D-Bus and tpm2-abrmd for `dir/tpm`, and creates the token
    /// (labelled like the SoftHSM2 dev token, PINs in `dir/pin` and `dir/so-pin`) on the
    /// first start. Installs the Debian packages with apt-get when a tool is missing.
    pub fn start(dir: &Path) -> anyhow::Result<TpmToken> {
        let module = ensure_installed()?;
        let tpm = dir.join("tpm");
        fs::create_dir_all(tpm.join("state"))?;
        fs::create_dir_all(tpm.join("store"))?;
        let mut token = TpmToken {
            children: Vec::new(),
            _bus_stdout: None,
            module,
            env: Vec::new(),
            port: 0,
        };
        // Another process may take the ports between the probe and swtpm's bind (tests
        // start TPM tokens in parallel): then swtpm exits, and it starts again on others.
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let (port, ctrl) = free_ports()?;
            let swtpm = spawn(
                &mut swtpm_command(&tpm.join("state"), port),
                &tpm.join("swtpm.log"),
            )?;
            token.children.push(("swtpm", swtpm));
            let started = wait_for(&mut token.children, "swtpm", || {
                TcpStream::connect(("127.0.0.1", ctrl)).is_ok()
            })
            .and_then(|()| {
                // Whoever answered, our swtpm must still run: else it lost the ports.
                sleep(Duration::from_millis(100));
                match token.children.last_mut().map(|(_, c)| c.try_wait()) {
                    Some(Ok(None)) => Ok(()),
                    _ => bail!("swtpm exited after start (ports {port}/{ctrl} taken?)"),
                }
            });
            match started {
                Ok(()) => break port,
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "swtpm did not start; new ports");
                    if let Some((_, mut c)) = token.children.pop() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                Err(e) => return Err(e),
            }
        };

        let mut bus = Command::new("dbus-daemon");
        bus.args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&tpm.join("dbus.log"))?);
        die_with_parent(&mut bus);
        let mut bus = bus.spawn().context("start dbus-daemon")?;
        let mut out = BufReader::new(bus.stdout.take().context("dbus-daemon stdout")?);
        token.children.push(("dbus-daemon", bus));
        let mut address = String::new();
        out.read_line(&mut address)
            .context("read dbus-daemon's address")?;
        let address = address.trim().to_string();
        if address.is_empty() {
            bail!(
                "dbus-daemon printed no address; see {}",
                tpm.join("dbus.log").display()
            );
        }
        token._bus_stdout = Some(out.into_inner());
        token.env = vec![
            ("DBUS_SESSION_BUS_ADDRESS", address),
            ("TPM2_PKCS11_TCTI", TABRMD_TCTI.into()),
            ("TPM2TOOLS_TCTI", TABRMD_TCTI.into()),
            ("TPM2_PKCS11_STORE", tpm.join("store").display().to_string()),
        ];

        let abrmd = spawn(
            token.with_env(&mut abrmd_command(port)),
            &tpm.join("abrmd.log"),
        )?;
        token.children.push(("tpm2-abrmd", abrmd));
        let env = token.env.clone();
        wait_for(&mut token.children, "tpm2-abrmd", || abrmd_ready(&env))?;

        if !dir.join("pin").exists() || !tpm.join("store/tpm2_pkcs11.sqlite3").exists() {
            token.create(dir)?;
        }
        token.port = port;
        token.write_env_file(&tpm)?;
        Ok(token)
    }

    /// The tpm2-pkcs11 module.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The environment variables the module needs; set them in the process that loads it.
    pub fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    fn with_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        with_env(&self.env, cmd)
    }

    /// Creates the store and the token. tpm2_ptool takes the PINs as arguments (visible
    /// to this user's `ps` for a second), as softhsm2-util does.
    fn create(&self, dir: &Path) -> anyhow::Result<()> {
        let store = dir.join("tpm/store");
        let pin = random_pin();
        let so_pin = random_pin();
        self.ptool(&["init", "--path", &store.display().to_string()])?;
        self.ptool(&[
            "addtoken",
            "--pid=1",
            &format!("--label={DEV_TOKEN_LABEL}"),
            &format!("--sopin={}", so_pin.expose_secret()),
            &format!("--userpin={}", pin.expose_secret()),
            "--path",
            &store.display().to_string(),
        ])?;
        write_secret(&dir.join("pin"), pin.expose_secret())?;
        write_secret(&dir.join("so-pin"), so_pin.expose_secret())?;
        Ok(())
    }

    fn ptool(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .with_env(&mut Command::new("tpm2_ptool"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run tpm2_ptool")?;
        if !out.status.success() {
            bail!(
                "tpm2_ptool {} failed ({}): {}",
                args[0],
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `DIR/tpm/env`: `export NAME='value'` lines for a shell, plus the module path and
    /// the pids, so a person or a test can reach the token and see what runs.
    fn write_env_file(&self, tpm: &Path) -> anyhow::Result<()> {
        let mut text =
            String::from("# Written by `hsmd dev --token tpm`: . this file to reach the token.\n");
        for (k, v) in &self.env {
            text.push_str(&format!("export {k}='{v}'\n"));
        }
        text.push_str(&format!(
            "export HSMD_TPM_MODULE='{}'\n",
            self.module.display()
        ));
        text.push_str(&format!("export HSMD_TPM_PORT={}\n", self.port));
        for (name, child) in &self.children {
            let var = name.replace('-', "_").to_uppercase();
            text.push_str(&format!("export HSMD_TPM_{var}_PID={}\n", child.id()));
        }
        fs::write(tpm.join("env"), text)?;
        Ok(())
    }
}

impl Drop for TpmToken {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn with_env<'a, K: AsRef<std::ffi::OsStr>>(
    env: &[(K, String)],
    cmd: &'a mut Command,
) -> &'a mut Command {
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// swtpm on `port` (server) and `port + 1` (control), loopback only, with its state in
/// `state`.
pub fn swtpm_command(state: &Path, port: u16) -> Command {
    let mut cmd = Command::new("swtpm");
    cmd.arg("socket")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--tpm2")
        .args([
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
        ])
        .args([
            "--ctrl",
            &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
        ])
        .args(["--flags", "not-need-init,startup-clear"]);
    cmd
}

/// tpm2-abrmd on the session bus of its environment, in front of the swtpm on `port`.
pub fn abrmd_command(port: u16) -> Command {
    let mut cmd = Command::new("tpm2-abrmd");
    cmd.arg("--session")
        .arg(format!("--tcti=swtpm:host=127.0.0.1,port={port}"))
        // tpm2-pkcs11 keeps the objects of each key it has used loaded for its
        // connection; the default cap of 27 failed CreateKey after a few dozen keys
        // ("out of memory for object contexts"). 100 is tpm2-abrmd's maximum.
        .arg(format!("--max-transients={ABRMD_MAX_TRANSIENTS}"));
    if nix::unistd::geteuid().is_root() {
        cmd.arg("--allow-root");
    }
    cmd
}

/// Waits until `ready` holds, failing early if a process of the token exited.
fn wait_for(
    children: &mut [(&'static str, Child)],
    what: &str,
    ready: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited with {status} while starting the TPM token");
            }
        }
        if Instant::now() > deadline {
            bail!("{what} not ready within {READY_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// True once tpm2-abrmd owns its name on the private bus.
pub fn abrmd_ready<K: AsRef<std::ffi::OsStr>>(env: &[(K, String)]) -> bool {
    let out = with_env(env, &mut Command::new("dbus-send"))
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "string:com.intel.tss2.Tabrmd",
        ])
        .stderr(Stdio::null())
        .output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("boolean true"))
}

/// The tpm2-pkcs11 module, if installed.
pub(crate) fn find_module() -> Option<PathBuf> {
    TPM_MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .collect()
}

fn ensure_installed() -> anyhow::Result<PathBuf> {
    if missing_tools().is_empty()
        && let Some(m) = find_module()
    {
        return Ok(m);
    }
    eprintln!(
        "hsmd dev: the TPM token needs {}; installing them with apt-get",
        TPM_PACKAGES.join(" ")
    );
    let mut args = vec!["install", "-y"];
    args.extend_from_slice(TPM_PACKAGES);
    super::apt_get(&["update"])?;
    super::apt_get(&args)?;
    let missing = missing_tools();
    if !missing.is_empty() {
        bail!("still missing after apt-get install: {}", missing.join(" "));
    }
    find_module().context("tpm2-pkcs11 installed but libtpm2_pkcs11.so not found")
}

/// Two consecutive free loopback ports: swtpm's TCTI reaches the control channel on
/// the server port + 1. Both are released just before swtpm binds them.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", next)).is_ok() {
            return Ok((port, next));
        }
    }
    bail!("found no two consecutive free loopback ports for swtpm")
}

fn log_file(path: &Path) -> anyhow::Result<fs::File> {
    fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = log_file(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    die_with_parent(cmd);
    cmd.spawn().with_context(|| format!("start {name}"))
}

/// The child gets SIGTERM when this process ends, however it ends (PR_SET_PDEATHSIG).
/// Children are started from the main thread, which lives as long as the process.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swtpm_gets_two_consecutive_free_ports() {
        let (server, ctrl) = free_ports().unwrap();
        assert_eq!(ctrl, server + 1);
        TcpListener::bind(("127.0.0.1", server)).expect("server port free");
        TcpListener::bind(("127.0.0.1", ctrl)).expect("control port free");
    }
}
