//! A private PostgreSQL server, for trying replicas (`hsmd dev --postgres`) and for the
//! tests of the PostgreSQL store: Debian's `postgresql` binaries (`initdb`, `postgres`,
//! `pg_isready`, `psql`) on a data folder of its own, a free loopback port and a Unix
//! socket folder of its own; no system service, cluster or configuration is touched.
//! Password authentication (scram-sha-256) for the `hsmd` role, as a deployment has it.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as `nobody`, which then
//! owns the data folder.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The command that installs PostgreSQL.
pub const POSTGRES_INSTALL_HINT: &str = "install with: apt-get install -y postgresql";

/// The role hsmd connects as.
pub const ROLE: &str = "hsmd";

/// The folder of the PostgreSQL server binaries (the newest version installed).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, b)) => Ok(b),
        None => bail!(
            "no PostgreSQL under {}; {POSTGRES_INSTALL_HINT}",
            root.display()
        ),
    }
}

/// `$TMPDIR/PREFIX-PID`: the folder of a server shared by this whole process (a test
/// binary's). Such a server is never dropped: it stops with the process, and the
/// folders of processes that are gone are removed here first.
pub fn process_dir(prefix: &str) -> PathBuf {
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.strip_prefix('-'))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()))
}

/// Starts a server in [`process_dir`]`(prefix)` that lives as long as the process: it
/// is started from a thread that never ends, since the server stops when the thread
/// that started it does.
pub fn start_for_process(prefix: &str) -> anyhow::Result<LocalPostgres> {
    let dir = process_dir(prefix);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-keeper".into())
        .spawn(move || {
            let _ = tx.send(LocalPostgres::start(&dir));
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()?
}

/// A running `postgres` on 127.0.0.1. Stopped (fast shutdown) on drop.
pub struct LocalPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    child: Option<Child>,
}

/// Gives `p` to `nobody`, the server's user when hsmd runs as root.
fn chown_nobody(p: &Path) -> anyhow::Result<()> {
    let nobody = (
        nix::unistd::Uid::from_raw(65534),
        nix::unistd::Gid::from_raw(65534),
    );
    nix::unistd::chown(p, Some(nobody.0), Some(nobody.1))
        .with_context(|| format!("chown nobody {}", p.display()))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `cmd`; its output if it exits 0, else an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}; {POSTGRES_INSTALL_HINT}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LocalPostgres {
    /// The server of folder `dir` (not started), on a free port.
    fn at(dir: &Path, password: String) -> anyhow::Result<LocalPostgres> {
        Ok(LocalPostgres {
            dir: dir.to_path_buf(),
            bin: bin_dir()?,
            port: free_port()?,
            password,
            child: None,
        })
    }

    /// A command that runs `program` from the PostgreSQL folder, as `nobody` when root.
    /// The server is also told to stop (SIGINT, fast shutdown) when the thread that
    /// started it ends, so that no server outlives its test binary or `hsmd dev`.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = Command::new("setpriv");
        if program == "postgres" {
            cmd.arg("--pdeathsig=SIGINT");
        }
        if is_root() {
            cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        }
        cmd.arg("--").arg(path);
        cmd
    }

    /// Initializes a cluster under `dir` and starts it; a cluster already there (an
    /// earlier start) is started again as it was, on a free port.
    pub fn start(dir: &Path) -> anyhow::Result<LocalPostgres> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let pwfile = dir.join("pwfile");
        if dir.join("data/PG_VERSION").exists() {
            let password = fs::read_to_string(&pwfile)
                .with_context(|| format!("read {}", pwfile.display()))?
                .trim()
                .to_string();
            let mut pg = LocalPostgres::at(dir, password)?;
            pg.restart()?;
            return Ok(pg);
        }
        let password = uuid::Uuid::new_v4().simple().to_string();
        fs::write(&pwfile, format!("{password}\n"))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        if is_root() {
            // The server's user must own its folder, and reach it.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            for p in [dir, pwfile.as_path()] {
                chown_nobody(p)?;
            }
            let mut up = dir.parent();
            while let Some(p) = up {
                // Private temporary folders (0700): let `nobody` through (not read).
                let m = fs::metadata(p)?.permissions().mode();
                if m & 0o001 == 0 && p.starts_with(std::env::temp_dir()) {
                    fs::set_permissions(p, fs::Permissions::from_mode(m | 0o001))?;
                }
                up = p.parent();
            }
        }
        let mut pg = LocalPostgres::at(dir, password)?;
        run(pg
            .command("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                ROLE,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display())))
        .context("initdb")?;
        pg.restart()?;
        Ok(pg)
    }

    /// Starts the server (again) on the same port and data; returns once it accepts
    /// connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .args(self.tls_options())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn postgres; {POSTGRES_INSTALL_HINT}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("postgres exited with {status}:\n{}", self.log());
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres did not accept connections within 60 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Serves TLS from now on (and at every restart) with this certificate and key
    /// (PEM files), copied into the server's folder where only its user reads the key;
    /// restarts the server. Clients choose: `sslmode=require` gets TLS, `disable` not.
    pub fn serve_tls(&mut self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        for (from, to, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = self.dir.join(to);
            fs::copy(from, &to).with_context(|| format!("copy {}", from.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
            if is_root() {
                chown_nobody(&to)?;
            }
        }
        self.restart()
    }

    /// `-c ssl=on ...` once [`LocalPostgres::serve_tls`] put the files in place.
    fn tls_options(&self) -> Vec<String> {
        let (cert, key) = (self.dir.join("server.crt"), self.dir.join("server.key"));
        if !(cert.exists() && key.exists()) {
            return Vec::new();
        }
        vec![
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={}", cert.display()),
            "-c".into(),
            format!("ssl_key_file={}", key.display()),
        ]
    }

    /// Stops the server (fast shutdown: SIGINT), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of [`ROLE`] (for a password file or `PGPASSWORD`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://hsmd@127.0.0.1:PORT/DATABASE` (no password: give it apart).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with `psql` on `database` as [`ROLE`]; the output is unaligned, tuples
    /// only (`-At`), one row per line.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        run(Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10"))
    }

    /// Creates a database (for one test, or one cluster).
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
            .with_context(|| format!("CREATE DATABASE {name}"))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
