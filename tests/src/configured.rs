//! Daemons with a config of the test's own: a policy, rate limits or audit settings.
//! `hsmd dev` provisions the folder (token, PKI) and rewrites its own config at every
//! start, so these run `hsmd serve` on a config derived from it. Also: SIGHUP, SIGKILL,
//! and a TCP proxy that can lose an answer.

use std::{
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{ADMIN_PRINCIPAL, Daemon, tools::free_port};

/// `extra` (raw TOML) after a policy that lets the dev client do everything, as the dev
/// config's own does: for [`Daemon::start_configured`] when only other settings change.
pub fn with_admin_policy(extra: &str) -> String {
    format!(
        "[[policy.rules]]\nprincipals = [\"{ADMIN_PRINCIPAL}\"]\nactions = [\"*\"]\nkeys = [\"*\"]\n{extra}"
    )
}

impl Daemon {
    /// Starts `hsmd dev` once (to provision), then `hsmd serve` on the dev config with
    /// its `[auth]`/`[policy]` replaced by `extra` (raw TOML: `[[policy.rules]]`,
    /// `[rate_limits]`, `[audit]` keys merged...). Returns the config path, which the
    /// test may rewrite before [`Daemon::sighup`].
    pub async fn start_configured(extra: &str) -> (Daemon, PathBuf) {
        let mut d = Daemon::start().await;
        let path = d.scratch().join("configured.toml");
        fs::write(&path, d.configured_text(extra)).expect("write config");
        d.restart_as_serve(&path).await;
        (d, path)
    }

    /// The dev config with a fixed port and `extra` in place of its policy. An
    /// `[audit]`, `[tls]` or `[hsm]` table in `extra` is merged into the dev one (its other
    /// keys kept).
    pub fn configured_text(&self, extra: &str) -> String {
        let text = fs::read_to_string(self.data_dir().join("hsmd.toml")).expect("hsmd.toml");
        let mut table: toml::Table = text.parse().expect("hsmd.toml is TOML");
        table.remove("auth");
        table.remove("policy");
        let listen = match &self.mode {
            crate::daemon::Mode::Serve { config, .. } => {
                let old: toml::Table = fs::read_to_string(config)
                    .expect("config")
                    .parse()
                    .expect("TOML");
                old["listen"].as_str().expect("listen").to_string()
            }
            crate::daemon::Mode::Dev => format!("127.0.0.1:{}", free_port()),
        };
        table.insert("listen".into(), listen.into());
        let mut extra_table: toml::Table = extra.parse().expect("extra config is TOML");
        for merged in ["audit", "tls", "hsm"] {
            if let Some(toml::Value::Table(a)) = extra_table.remove(merged) {
                table
                    .get_mut(merged)
                    .and_then(|v| v.as_table_mut())
                    .unwrap_or_else(|| panic!("[{merged}] in the dev config"))
                    .extend(a);
            }
        }
        for (k, v) in extra_table {
            table.insert(k, v);
        }
        table.to_string()
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("daemon is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Sends SIGHUP (reload the policy).
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Kills the daemon with SIGKILL (no shutdown work at all) and waits for it.
    pub fn kill_hard(&mut self) {
        self.signal(libc::SIGKILL);
        let mut child = self.child.take().expect("daemon is running");
        let _ = child.wait();
        self.inst.channel = None;
    }

    /// After [`Daemon::kill_hard`], before the restart: `hsmctl audit verify` offline with
    /// the audit key `pem` finds the chain whole, or only its last line torn (hsmd died
    /// mid-write). `what` names the moment in the panic message.
    pub fn verify_offline_after_crash(&self, pem: &std::path::Path, what: &str) {
        let out = self.hsmctl(crate::args![
            "audit",
            "verify",
            "--public-key",
            pem,
            self.data_dir().join("audit")
        ]);
        if !out.success() {
            let problems: Vec<&str> = out.stdout.lines().skip(1).collect();
            assert!(
                problems.len() == 1 && problems[0].starts_with("torn-line: "),
                "{what}: only a torn last line may be wrong after kill -9:\n{}",
                out.stdout
            );
        }
    }

    /// Starts the daemon again after [`Daemon::kill_hard`] (same mode and folder).
    pub async fn start_again(&mut self) {
        self.launch().await;
    }

    /// True while the daemon process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// A TCP proxy in front of the daemon. Armed with [`Proxy::lose_next_answer`], it lets
/// the next request through but swallows everything the server sends back on that
/// connection, then cuts it after `hold`: the server has done the work and answered,
/// the client never hears of it.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `target`.
    pub async fn start(target: std::net::SocketAddr, hold: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let armed = Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, flag.clone(), hold));
            }
        });
        Proxy { addr, armed }
    }

    /// Swallows the answers of the connection that sends the next request.
    pub fn lose_next_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// True once the armed loss has happened.
    pub fn lost(&self) -> bool {
        !self.armed.load(Ordering::SeqCst)
    }
}

async fn pipe(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>, hold: Duration) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set once this connection carries a request sent while armed.
    let doomed = Arc::new(AtomicBool::new(false));
    let d = doomed.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if armed.swap(false, Ordering::SeqCst) {
                d.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if doomed.load(Ordering::SeqCst) {
            // Swallow the answer, then cut the connection.
            tokio::time::sleep(hold).await;
            break;
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}
