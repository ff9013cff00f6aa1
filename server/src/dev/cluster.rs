//! `hsmd dev --postgres [--replicas N]`: a cluster to try on one machine. A private
//! PostgreSQL under DIR/postgres (made once, kept across restarts) and N replicas on
//! DIR's token, each its own `hsmd dev --store-url ... --node-id nodeK` process, as an
//! operator would run them on N hosts. This process only supervises: Ctrl-C or SIGTERM
//! stops the replicas (gracefully, each sealing its audit chain), then PostgreSQL.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::DevToken;
use super::postgres::LocalPostgres;

/// The database the replicas share.
const DATABASE: &str = "hsmd";

/// The gRPC address of replica `k` (0-based): --listen's port plus k, or free ports.
fn listen_of(listen: &str, k: u16) -> anyhow::Result<String> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen '{listen}' is not HOST:PORT"))?;
    if addr.port() == 0 {
        return Ok(addr.to_string());
    }
    let port = addr
        .port()
        .checked_add(k)
        .context("--listen port + replicas is past 65535")?;
    Ok(SocketAddr::new(addr.ip(), port).to_string())
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub fn run(dir: &Path, listen: &str, token: DevToken, replicas: u16) -> anyhow::Result<()> {
    if token != DevToken::Softhsm {
        bail!("--postgres runs its replicas on a SoftHSM2 token (--token softhsm)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let tls = dir.join("tls");
    {
        // The dev PKI's server certificate (127.0.0.1) serves PostgreSQL's TLS too.
        let _provisioning = super::lock(&dir)?;
        super::certs::ensure(&tls, super::DEV_PRINCIPAL)?;
    }
    let mut pg = LocalPostgres::start(&dir.join("postgres"))?;
    pg.serve_tls(&tls.join("server.pem"), &tls.join("server.key"))?;
    if pg
        .psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
        )?
        .trim()
        .is_empty()
    {
        pg.create_database(DATABASE)?;
    }
    let password_file = dir.join("postgres.password");
    super::write_secret(&password_file, &format!("{}\n", pg.password()))?;
    let url = format!("{}?sslmode=require", pg.url(DATABASE));
    println!(
        "hsmd dev: PostgreSQL on {url} (data under {}); starting {replicas} replica(s)",
        dir.join("postgres").display()
    );
    let exe = std::env::current_exe().context("the hsmd binary")?;
    let mut children: Vec<(String, Child)> = Vec::new();
    for k in 0..replicas {
        let node = format!("node{}", k + 1);
        let child = Command::new(&exe)
            .arg("dev")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &listen_of(listen, k)?])
            .args(["--store-url", &url, "--node-id", &node])
            .arg("--store-password-file")
            .arg(&password_file)
            .arg("--store-ca-file")
            .arg(tls.join("ca.pem"))
            .spawn()
            .with_context(|| format!("start replica {node}"))?;
        children.push((node, child));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let why = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>("interrupted"),
                _ = term.recv() => return Ok("terminated"),
                _ = tick.tick() => {
                    for (node, child) in &mut children {
                        if let Some(status) = child.try_wait()? {
                            eprintln!("hsmd dev: replica {node} exited ({status})");
                        }
                    }
                    children.retain_mut(|(_, c)| c.try_wait().ok().flatten().is_none());
                    if children.is_empty() {
                        return Ok("every replica exited");
                    }
                }
            }
        }
    })?;
    eprintln!("hsmd dev: {why}; stopping the replicas, then PostgreSQL");
    for (_, child) in &children {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (node, child) in &mut children {
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("hsmd dev: replica {node} did not stop in 30 s; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(pg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::listen_of;

    #[test]
    fn replicas_listen_on_following_ports_or_free_ones() {
        assert_eq!(listen_of("127.0.0.1:8443", 1).unwrap(), "127.0.0.1:8444");
        assert_eq!(listen_of("127.0.0.1:0", 3).unwrap(), "127.0.0.1:0");
        assert!(listen_of("127.0.0.1:65535", 1).is_err());
        assert!(listen_of("nonsense", 0).is_err());
    }
}
