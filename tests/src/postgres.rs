//! A real PostgreSQL server for the replica tests (issue 17): hsmd's own private
//! server (`hsmd::dev::postgres`, which `hsmd dev --postgres` starts too), with the
//! test harness's manners: a failure panics with the install command or the server's
//! log, and `psql` answers with the whole command output. Start one server per test
//! binary and give each test its own database ([`Postgres::create_database`]).
//!
//! `scripts/test` installs `postgresql`; a missing binary fails the test with the
//! install command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hsmd::dev::postgres::LocalPostgres;
pub use hsmd::dev::postgres::{POSTGRES_INSTALL_HINT, ROLE};

use crate::tools::{self, CmdOutput};

/// The folder of the PostgreSQL server binaries (the newest version installed).
pub fn bin_dir() -> PathBuf {
    hsmd::dev::postgres::bin_dir().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A running `postgres` on 127.0.0.1. Stopped (fast shutdown) on drop.
pub struct Postgres(LocalPostgres);

/// The test binary's own server, started by the first test that asks; it stops with
/// the binary. Tests that stop or restart a server start one of their own instead.
pub fn shared() -> &'static Postgres {
    static PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    PG.get_or_init(|| {
        Postgres(
            hsmd::dev::postgres::start_for_process("hsmd-e2e-pg")
                .unwrap_or_else(|e| panic!("start postgres: {e:#}")),
        )
    })
}

impl Postgres {
    /// Initializes a cluster under `dir` (a fresh folder) and starts it.
    pub fn start(dir: &Path) -> Postgres {
        Postgres(LocalPostgres::start(dir).unwrap_or_else(|e| panic!("start postgres: {e:#}")))
    }

    /// Starts the server (again) on the same port and data; returns once it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.0
            .restart()
            .unwrap_or_else(|e| panic!("restart postgres: {e:#}"));
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        self.0.stop();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The password of [`ROLE`] (for a password file or `PGPASSWORD`).
    pub fn password(&self) -> &str {
        self.0.password()
    }

    /// `postgres://hsmd@127.0.0.1:PORT/DATABASE` (no password: give it apart).
    pub fn url(&self, database: &str) -> String {
        self.0.url(database)
    }

    /// Runs SQL with `psql` on `database` as [`ROLE`]; the output is unaligned, tuples
    /// only (`-At`), one row per line.
    pub fn psql(&self, database: &str, sql: &str) -> CmdOutput {
        tools::run_unchecked(
            Command::new(bin_dir().join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port().to_string(),
                    "-U",
                    ROLE,
                ])
                .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
                .env("PGPASSWORD", self.password())
                .env("PGCONNECT_TIMEOUT", "10")
                .stdin(Stdio::null()),
        )
    }

    /// Creates a database of its own for one test.
    pub fn create_database(&self, name: &str) {
        self.0
            .create_database(name)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}
