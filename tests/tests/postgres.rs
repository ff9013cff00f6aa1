//! The PostgreSQL server the replica tests run on (issue 17), checked on its own before
//! hsmd uses it: Debian's binaries on a private folder and port, password authentication
//! enforced, data kept across a restart, and nothing answering once it is stopped.

use std::process::Command;

use hsmd_e2e::postgres::{Postgres, ROLE, bin_dir};

#[test]
fn a_private_postgres_starts_authenticates_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(&dir.path().join("pg"));
    pg.create_database("t1");
    let out = pg.psql(
        "t1",
        "CREATE TABLE k (id text PRIMARY KEY, state text NOT NULL); \
         INSERT INTO k VALUES ('a', 'ENABLED'), ('b', 'DISABLED');",
    );
    assert!(out.success(), "{}", out.describe());
    let version = pg.psql("t1", "SHOW server_version_num");
    assert!(version.success(), "{}", version.describe());
    assert!(
        version.stdout.trim().parse::<u32>().unwrap() >= 130000,
        "{}",
        version.stdout
    );

    // Password authentication is on: a wrong password is refused.
    let wrong = Command::new(bin_dir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            ROLE,
            "-d",
            "t1",
        ])
        .args(["-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    pg.restart();
    let rows = pg.psql("t1", "SELECT id || '=' || state FROM k ORDER BY id");
    assert_eq!(
        rows.stdout.trim(),
        "a=ENABLED\nb=DISABLED",
        "{}",
        rows.describe()
    );
    assert!(pg.url("t1").ends_with(&format!(":{}/t1", pg.port())));

    pg.stop();
    let gone = pg.psql("t1", "SELECT 1");
    assert!(!gone.success(), "a stopped server answers nothing");
}
