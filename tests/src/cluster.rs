//! [`Cluster`]: replicas of `hsmd dev` on one data folder (one SoftHSM2 token, one
//! PKI) and one PostgreSQL database, as `hsmd dev --store-url ... --node-id NAME`
//! runs them (issue 17). Each replica is its own process with its own port; the
//! harness connects to each one apart, as the dev admin.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hsmd_proto::v1::audit_service_client::AuditServiceClient;
use hsmd_proto::v1::key_service_client::KeyServiceClient;
use tonic::transport::Channel;

use crate::daemon::{START_TIMEOUT, hsmctl_with, stop_within};
use crate::instance::connect_admin;
use crate::postgres::Postgres;
use crate::profile::Profile;
use crate::tools::{self, CmdOutput};

/// One replica.
pub struct Node {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    channel: Channel,
    stderr: PathBuf,
}

impl Node {
    /// A KeyService client on this replica.
    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel.clone())
    }

    /// An AuditService client on this replica.
    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel.clone())
    }

    /// The replica's channel, as the dev admin (for any service's client).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// What the replica printed on stderr.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Replicas on one data folder and one database of `pg`.
pub struct Cluster {
    root: tempfile::TempDir,
    url: String,
    password_file: PathBuf,
    nodes: BTreeMap<String, Node>,
    starts: u32,
    /// `HSMD_*` settings every replica starts with (config overrides).
    env: Vec<(String, String)>,
    /// More `hsmd dev` arguments every replica starts with.
    args: Vec<String>,
}

impl Cluster {
    /// A fresh data folder and a fresh database on `pg`; no replica runs yet.
    pub fn new(pg: &Postgres) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let db = format!("c{}", uuid::Uuid::new_v4().simple());
        pg.create_database(&db);
        let password_file = root.path().join("pg.password");
        fs::write(&password_file, format!("{}\n", pg.password())).expect("password file");
        Cluster {
            url: pg.url(&db),
            password_file,
            root,
            nodes: BTreeMap::new(),
            starts: 0,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Every replica started from now on gets `HSMD_<name>=value` (a config key, e.g.
    /// `RATE_LIMITS__SIGN`).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((format!("HSMD_{name}"), value.to_string()));
    }

    /// Every replica started from now on gets these `hsmd dev` arguments too.
    pub fn add_args<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, args: I) {
        self.args.extend(args.into_iter().map(Into::into));
    }

    /// The shared data folder (token, PKI, configs, `audit/NODE/`, `client.toml`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// `DIR/client.toml`, which lists every replica's endpoint.
    pub fn profile_path(&self) -> PathBuf {
        self.data_dir().join("client.toml")
    }

    /// Starts replica `name` (again, after [`Cluster::kill`]) and connects to it.
    pub async fn start(&mut self, name: &str) -> &Node {
        self.starts += 1;
        let dir = self.data_dir();
        let marker = dir.join("replicas").join(name);
        let _ = fs::remove_file(&marker);
        let stderr = self
            .root
            .path()
            .join(format!("{name}-{}.stderr", self.starts));
        let child = Command::new(tools::workspace_bin("hsmd"))
            .arg("dev")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0", "--token", "softhsm"])
            .args(["--store-url", &self.url, "--node-id", name])
            .arg("--store-password-file")
            .arg(&self.password_file)
            .args(&self.args)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("PGPASSWORD")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn hsmd dev");
        let mut node = Node {
            child: Some(child),
            endpoint: String::new(),
            channel: Channel::from_static("http://[::1]:1").connect_lazy(),
            stderr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let profile = loop {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "replica {name} exited with {status}:\n{}",
                    node.stderr_text()
                );
            }
            if let Ok(endpoint) = fs::read_to_string(&marker)
                && let Ok(text) = fs::read_to_string(self.profile_path())
                && let Ok(mut profile) = Profile::parse(&text)
                && profile.endpoints.contains(&endpoint.trim().to_string())
            {
                profile.endpoint = endpoint.trim().to_string();
                break profile;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name} did not start within {START_TIMEOUT:?}:\n{}",
                node.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        node.endpoint = profile.endpoint.clone();
        node.channel = connect_admin(&profile, |e| e)
            .await
            .unwrap_or_else(|e| panic!("connect to replica {name}: {e:?}"));
        self.nodes.insert(name.to_string(), node);
        &self.nodes[name]
    }

    /// Replica `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    /// Kills replica `name` with SIGKILL: no shutdown work at all.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.nodes.get_mut(name).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `hsmctl --profile DIR/client.toml ARGS...` (every replica's endpoint).
    pub fn hsmctl<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        hsmctl_with(&self.profile_path(), self.root.path(), args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (name, node) in &mut self.nodes {
            if let Some(c) = node.child.take() {
                stop_within(c, Duration::from_secs(10));
            }
            if panicking {
                eprintln!("---- replica {name} stderr:\n{}", node.stderr_text());
            }
        }
    }
}
