//! A real PostgreSQL server for the replica tests (issue 17): Debian's `postgresql`
//! binaries (`initdb`, `postgres`, `pg_isready`, `psql`) run on a private data folder, a
//! free loopback port and a Unix socket folder of their own; no system service, cluster
//! or configuration is touched. Password authentication (scram-sha-256) for the `hsmd`
//! role, as a deployment would have it.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as `nobody`, which then
//! owns the data folder. Start one server per test binary and give each test its own
//! database ([`Postgres::create_database`]).
//!
//! `scripts/test` installs `postgresql`; a missing binary fails the test with the
//! install command.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{self, CmdOutput};

/// The command that installs PostgreSQL.
pub const POSTGRES_INSTALL_HINT: &str = "install with: apt-get install -y postgresql";

/// The role the tests (and hsmd) connect as.
pub const ROLE: &str = "hsmd";

/// The folder of the PostgreSQL server binaries (the newest version installed).
pub fn bin_dir() -> PathBuf {
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
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL under {}; {POSTGRES_INSTALL_HINT}",
            root.display()
        )
    })
}

/// A running `postgres` on 127.0.0.1. Stopped (fast shutdown) on drop.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    password: String,
    child: Option<Child>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` from the PostgreSQL folder, as `nobody` when root.
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

impl Postgres {
    /// Initializes a cluster under `dir` (a fresh folder) and starts it.
    pub fn start(dir: &Path) -> Postgres {
        let data = dir.join("data");
        fs::create_dir_all(dir).expect("postgres dir");
        let password = uuid::Uuid::new_v4().simple().to_string();
        let pwfile = dir.join("pwfile");
        fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
        if is_root() {
            // The server's user must own its folder, and reach it.
            for p in [dir, pwfile.as_path()] {
                let mode = if p.is_dir() { 0o700 } else { 0o600 };
                fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
                chown_nobody(p);
            }
            let mut up = dir.parent();
            while let Some(p) = up {
                // tempdir folders are 0700: let `nobody` through (not read).
                let m = fs::metadata(p).expect("stat").permissions().mode();
                if m & 0o001 == 0 && p.starts_with(std::env::temp_dir()) {
                    fs::set_permissions(p, fs::Permissions::from_mode(m | 0o001)).expect("chmod");
                }
                up = p.parent();
            }
        }
        let out = tools::run_unchecked(
            pg_command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    ROLE,
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .stdin(Stdio::null()),
        );
        assert!(out.success(), "initdb failed\n{}", out.describe());
        let mut pg = Postgres {
            dir: dir.to_path_buf(),
            port: tools::free_port(),
            password,
            child: None,
        };
        pg.restart();
        pg
    }

    /// Starts the server (again) on the same port and data; returns once it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("postgres log");
        let child = pg_command("postgres")
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn postgres: {e}; {POSTGRES_INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: SIGINT), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = libc::pid_t::try_from(c.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
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
    pub fn psql(&self, database: &str, sql: &str) -> CmdOutput {
        tools::run_unchecked(
            Command::new(bin_dir().join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
                .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
                .env("PGPASSWORD", &self.password)
                .env("PGCONNECT_TIMEOUT", "10")
                .stdin(Stdio::null()),
        )
    }

    /// Creates a database of its own for one test.
    pub fn create_database(&self, name: &str) {
        let out = self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        assert!(out.success(), "CREATE DATABASE {name}\n{}", out.describe());
    }
}

fn chown_nobody(p: &Path) {
    let out = tools::run_unchecked(Command::new("chown").arg("nobody:nogroup").arg(p));
    assert!(
        out.success(),
        "chown nobody {}\n{}",
        p.display(),
        out.describe()
    );
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
