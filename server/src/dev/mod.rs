//! `hsmd dev`: everything a newcomer needs under one data folder. A SoftHSM2 token with
//! its own softhsm2.conf (installing SoftHSM2 with apt-get if it is missing), a PIN file
//! (0600), a local CA with server and client certificates, a config whose policy lets
//! the local client do everything, and (once the listener is bound) the client profile that
//! `hsmctl` finds on its own. Reuses what is already there. `certs` makes the local PKI.

mod certs;
pub mod cluster;
/// A private PostgreSQL server (`hsmd dev --postgres`, and the tests'): it lives beside
/// the store, whose tests start it too.
pub mod postgres {
    pub use crate::store::local_postgres::*;
}
mod tpm;

pub use tpm::{TPM_PACKAGES, TpmToken, abrmd_command, abrmd_ready, swtpm_command};

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// Label of the dev token.
pub(crate) const DEV_TOKEN_LABEL: &str = "hsmd-dev";
/// Principal of the dev client certificate.
pub(crate) const DEV_PRINCIPAL: &str = "spiffe://hsmd.dev/admin";
/// Where Debian and others put the SoftHSM2 module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
const SOFTHSM2_CONF_TEMPLATE: &str =
    include_str!("../../../tokens/softhsm2/softhsm2.conf.template");

/// The default dev data folder: `$XDG_DATA_HOME/hsmd/dev`, else
/// `$HOME/.local/share/hsmd/dev`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hsmd/dev")
}

/// `hsmd dev --kms-socket PATH [--kms-key KEY]`: serve the Kubernetes KMS v2 plugin.
#[derive(Debug, Clone)]
pub struct DevKms {
    pub socket: PathBuf,
    /// `alias/NAME` (created with an AES-256 key when missing) or a key id.
    pub key: String,
}

/// Which token `hsmd dev` provisions (`--token`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevToken {
    /// SoftHSM2 (the default): files under DIR/tokens.
    #[default]
    Softhsm,
    /// tpm2-pkcs11 on swtpm, with a private D-Bus and tpm2-abrmd, under DIR/tpm.
    Tpm,
}

impl std::str::FromStr for DevToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "softhsm" | "softhsm2" => Ok(DevToken::Softhsm),
            "tpm" => Ok(DevToken::Tpm),
            other => Err(format!("unknown token '{other}': use softhsm or tpm")),
        }
    }
}

/// A provisioned dev folder: its config, and the TPM token's processes when `--token
/// tpm` (they stop when this is dropped).
#[derive(Debug)]
pub struct Provisioned {
    pub config: PathBuf,
    pub tpm: Option<TpmToken>,
}

/// Provisions (or reuses) a SoftHSM2 `dir` and returns the path of its `hsmd.toml`.
/// Must run before any thread starts: it sets SOFTHSM2_CONF for this process.
pub fn provision(dir: &Path, listen: &str) -> anyhow::Result<PathBuf> {
    provision_with(dir, listen, &DevOptions::default()).map(|p| p.config)
}

/// What `hsmd dev` runs on and serves beside the gRPC API.
#[derive(Debug, Clone, Default)]
pub struct DevOptions<'a> {
    /// The token (`--token`).
    pub token: DevToken,
    /// Prometheus metrics and /healthz over plain HTTP here (port 0: a free port).
    pub metrics_listen: Option<&'a str>,
    /// The Kubernetes KMS v2 plugin (its principal allowed Encrypt and Decrypt on every
    /// key).
    pub kms: Option<DevKms>,
    /// The OCI registry images are signed in, and its push webhook.
    pub registry: Option<DevRegistry>,
    /// A replica of a cluster on PostgreSQL (`--store-url`), instead of one node on
    /// DIR/hsmd.db.
    pub cluster: Option<DevCluster>,
}

/// `hsmd dev --store-url postgres://... [--store-password-file FILE] [--node-id NAME]`:
/// one replica of a cluster on DIR's token and PKI. Each replica has its own config
/// (DIR/hsmd-NAME.toml) and audit chain (DIR/audit/NAME/); the client profile lists
/// every replica's endpoint (DIR/replicas/NAME holds each one's).
#[derive(Debug, Clone)]
pub struct DevCluster {
    pub store_url: String,
    /// The PostgreSQL password, one line; else `PGPASSWORD` or the URL's.
    pub password_file: Option<PathBuf>,
    /// PEM roots for the store's TLS (`sslmode=require` in the URL).
    pub ca_file: Option<PathBuf>,
    /// This replica's name [default: the host name].
    pub node_id: String,
}

impl DevCluster {
    /// Checks `--node-id` (default: the host name) as the config's `node_id` is.
    pub fn new(
        store_url: String,
        password_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        node_id: Option<String>,
    ) -> anyhow::Result<DevCluster> {
        crate::store::PgConfig::check_url(&store_url)
            .map_err(|e| anyhow::anyhow!("--store-url: {e}"))?;
        let node_id =
            crate::domain::node::node_id(node_id).map_err(|e| anyhow::anyhow!("--node-id: {e}"))?;
        Ok(DevCluster {
            store_url,
            password_file,
            ca_file,
            node_id,
        })
    }
}

/// `hsmd dev --registry URL [--webhook-listen ADDR] [--webhook-secret-file FILE]`.
#[derive(Debug, Clone)]
pub struct DevRegistry {
    /// `http://HOST:PORT` or `https://...`.
    pub url: String,
    /// Where the push webhook listens (port 0: a free port).
    pub webhook_listen: String,
    /// The shared secret the registry sends; default DIR/webhook.secret, made once.
    pub webhook_secret_file: Option<PathBuf>,
}

/// As [`provision`], with the token and extras of `options`. For the TPM token it starts
/// the token's processes and sets the variables its module reads in this process'
/// environment, so it too must run before any thread starts.
pub fn provision_with(
    dir: &Path,
    listen: &str,
    options: &DevOptions<'_>,
) -> anyhow::Result<Provisioned> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // Replicas started together on one folder provision it once.
    let _provisioning = lock(&dir)?;
    check_same_token(&dir, options.token)?;
    let (module, softhsm2_conf, tpm) = match options.token {
        DevToken::Softhsm => {
            let (module, conf) = provision_softhsm(&dir)?;
            (module, Some(conf), None)
        }
        DevToken::Tpm => {
            let tpm = TpmToken::start(&dir)?;
            for (k, v) in tpm.env() {
                // SAFETY: called from main before the runtime or any other thread exists.
                unsafe { std::env::set_var(k, v) };
            }
            (tpm.module().to_path_buf(), None, Some(tpm))
        }
    };
    certs::ensure(&dir.join("tls"), DEV_PRINCIPAL)?;
    let config = match &options.cluster {
        Some(c) => dir.join(format!("hsmd-{}.toml", c.node_id)),
        None => dir.join("hsmd.toml"),
    };
    let mut text = config_text(
        &dir,
        &module,
        softhsm2_conf,
        listen,
        options.metrics_listen,
        options.cluster.as_ref(),
    )?;
    if let Some(k) = &options.kms {
        text.push_str(&kms_text(k)?);
    }
    if let Some(r) = &options.registry {
        text.push_str(&registry_text(&dir, r)?);
    }
    if options.cluster.is_some() {
        // The store URL may hold a password.
        write_secret(&config, &text)?;
    } else {
        fs::write(&config, text)?;
    }
    Ok(Provisioned { config, tpm })
}

/// Refuses a folder provisioned for the other token: its PIN file and key store belong
/// to that token, and reusing them would overwrite the PIN or orphan every key.
fn check_same_token(dir: &Path, token: DevToken) -> anyhow::Result<()> {
    let other = match token {
        DevToken::Softhsm if dir.join("tpm").exists() => "the TPM token (--token tpm)",
        DevToken::Tpm if dir.join("softhsm2.conf").exists() => "a SoftHSM2 token (--token softhsm)",
        _ => return Ok(()),
    };
    bail!(
        "{} holds {other}; use it with that token, or choose another --data-dir",
        dir.display()
    )
}

/// The SoftHSM2 token under DIR/tokens; returns the module and the softhsm2.conf.
fn provision_softhsm(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir.join("tokens")).with_context(|| format!("create {}", dir.display()))?;
    let module = ensure_softhsm()?;
    let conf = dir.join("softhsm2.conf");
    let text =
        SOFTHSM2_CONF_TEMPLATE.replace("@TOKENDIR@", &dir.join("tokens").display().to_string());
    fs::write(&conf, text)?;
    // SAFETY: called from main before the runtime or any other thread exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let pin_file = dir.join("pin");
    if !pin_file.exists() {
        init_token(&module, &pin_file)?;
    }
    Ok((module, conf))
}

/// `hsmd.toml` as `hsmd dev` writes it; serialized, so any path (quotes, backslashes)
/// comes out as a valid TOML string. Keys as `config::RawConfig` reads them.
#[derive(Serialize)]
struct DevConfig<'a> {
    listen: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    hsm: DevHsm<'a>,
    store: DevStore<'a>,
    audit: DevPath,
    tls: DevTls,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<DevMetrics<'a>>,
}

#[derive(Serialize)]
struct DevMetrics<'a> {
    listen: &'a str,
}

#[derive(Serialize)]
struct DevHsm<'a> {
    module: &'a Path,
    token_label: &'a str,
    pin_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    softhsm2_conf: Option<PathBuf>,
}

#[derive(Serialize)]
struct DevPath {
    path: PathBuf,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DevStore<'a> {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        url: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Serialize)]
struct DevTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

/// The policy table, serialized on its own so a comment can go above it.
#[derive(Serialize)]
struct DevPolicy {
    policy: DevRules,
}

#[derive(Serialize)]
struct DevRules {
    rules: [DevRule; 1],
}

#[derive(Serialize)]
struct DevRule {
    principals: [&'static str; 1],
    actions: [&'static str; 1],
    keys: [&'static str; 1],
}

/// `hsmd.toml` for `dir`. Fails only on a path that is not UTF-8 (TOML cannot hold it).
fn config_text(
    dir: &Path,
    module: &Path,
    softhsm2_conf: Option<PathBuf>,
    listen: &str,
    metrics_listen: Option<&str>,
    cluster: Option<&DevCluster>,
) -> anyhow::Result<String> {
    let (store, audit) = match cluster {
        None => (
            DevStore::Sqlite {
                path: dir.join("hsmd.db"),
            },
            dir.join("audit/audit.log"),
        ),
        Some(c) => (
            DevStore::Postgres {
                url: &c.store_url,
                password_file: c
                    .password_file
                    .as_ref()
                    .map(std::path::absolute)
                    .transpose()?,
                ca_file: c.ca_file.as_ref().map(std::path::absolute).transpose()?,
            },
            dir.join("audit").join(&c.node_id).join("audit.log"),
        ),
    };
    let config = DevConfig {
        listen,
        node_id: cluster.map(|c| c.node_id.as_str()),
        hsm: DevHsm {
            module,
            token_label: DEV_TOKEN_LABEL,
            pin_file: dir.join("pin"),
            softhsm2_conf,
        },
        store,
        audit: DevPath { path: audit },
        tls: DevTls {
            cert: dir.join("tls/server.pem"),
            key: dir.join("tls/server.key"),
            client_ca: dir.join("tls/ca.pem"),
        },
        metrics: metrics_listen.map(|listen| DevMetrics { listen }),
    };
    let policy = DevPolicy {
        policy: DevRules {
            rules: [DevRule {
                principals: [DEV_PRINCIPAL],
                actions: ["*"],
                keys: ["*"],
            }],
        },
    };
    Ok(format!(
        "# Written by `hsmd dev`; rewritten at each start.\n{}\n\
         # The local client may do everything on every key.\n{}",
        toml::to_string(&config).context("hsmd.toml")?,
        toml::to_string(&policy).context("hsmd.toml policy")?,
    ))
}

/// `[kubernetes]` and the plugin principal's rule, appended to `hsmd.toml`.
fn kms_text(kms: &DevKms) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Section<'a> {
        kubernetes: Kubernetes<'a>,
    }
    #[derive(Serialize)]
    struct Kubernetes<'a> {
        socket: &'a Path,
        key: &'a str,
        create_key: bool,
    }
    #[derive(Serialize)]
    struct Rules {
        policy: Rule,
    }
    #[derive(Serialize)]
    struct Rule {
        rules: [KmsRule; 1],
    }
    #[derive(Serialize)]
    struct KmsRule {
        principals: [String; 1],
        actions: [&'static str; 2],
        keys: [&'static str; 1],
    }
    let socket = if kms.socket.is_absolute() {
        kms.socket.clone()
    } else {
        std::env::current_dir()?.join(&kms.socket)
    };
    let section = Section {
        kubernetes: Kubernetes {
            socket: &socket,
            key: &kms.key,
            create_key: kms.key.starts_with("alias/"),
        },
    };
    let principal = format!("kubernetes:{}", socket.display());
    let rule = Rules {
        policy: Rule {
            rules: [KmsRule {
                principals: [principal],
                actions: ["Encrypt", "Decrypt"],
                keys: ["*"],
            }],
        },
    };
    // `[[policy.rules]]` again: TOML appends this rule to the array above.
    Ok(format!(
        "\n# The Kubernetes KMS v2 plugin (hsmd dev --kms-socket).\n{}\n{}",
        toml::to_string(&section).context("hsmd.toml kubernetes")?,
        toml::to_string(&rule).context("hsmd.toml kubernetes rule")?,
    ))
}

/// `[registry]`, appended to `hsmd.toml`; makes DIR/webhook.secret (random, mode 0600)
/// when no secret file is given and it does not exist yet.
fn registry_text(dir: &Path, r: &DevRegistry) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Section<'a> {
        registry: Registry<'a>,
    }
    #[derive(Serialize)]
    struct Registry<'a> {
        url: &'a str,
        webhook_listen: &'a str,
        webhook_secret_file: PathBuf,
    }
    crate::signing::config::parse_url(&r.url).map_err(|e| anyhow::anyhow!("--registry {e}"))?;
    let secret = match &r.webhook_secret_file {
        Some(f) => std::path::absolute(f)?,
        None => {
            let f = dir.join("webhook.secret");
            if !f.exists() {
                // 122 random bits from the OS (a v4 UUID), as the token PIN is made.
                write_secret(&f, &format!("{}\n", random_pin().expose_secret()))?;
            }
            f
        }
    };
    crate::signing::config::read_secret(&secret)
        .map_err(|e| anyhow::anyhow!("--webhook-secret-file {e}"))?;
    let section = Section {
        registry: Registry {
            url: &r.url,
            webhook_listen: &r.webhook_listen,
            webhook_secret_file: secret,
        },
    };
    Ok(format!(
        "\n# The OCI registry images are signed in (hsmd dev --registry).\n{}",
        toml::to_string(&section).context("hsmd.toml registry")?,
    ))
}

/// `client.toml`: the keys `hsm_client::Profile` reads.
#[derive(Serialize)]
struct DevProfile {
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<String>>,
    server_name: &'static str,
    ca_cert: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_endpoint: Option<String>,
}

/// Where `hsmd dev` listens, once bound: gRPC, and the metrics and webhook listeners if
/// any (the fields of `server::Bound`, which this layer does not name).
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub webhook: Option<SocketAddr>,
}

/// The profile of one node (`replicas` empty: `endpoint`), or of a cluster
/// (`endpoints`, every replica's).
fn profile_text(dir: &Path, bound: Listening, replicas: Vec<String>) -> anyhow::Result<String> {
    let (endpoint, endpoints) = if replicas.is_empty() {
        (Some(format!("https://{}", bound.grpc)), None)
    } else {
        (None, Some(replicas))
    };
    let profile = DevProfile {
        endpoint,
        endpoints,
        metrics_endpoint: bound.metrics.map(|m| format!("http://{m}")),
        webhook_endpoint: bound.webhook.map(webhook_url),
        server_name: "localhost",
        ca_cert: dir.join("tls/ca.pem"),
        client_cert: dir.join("tls/client.pem"),
        client_key: dir.join("tls/client.key"),
    };
    Ok(format!(
        "# Written by `hsmd dev` for hsmctl and hsm-client.\n{}",
        toml::to_string(&profile).context("client.toml")?
    ))
}

/// The URL the registry notifies, for a webhook bound at `at`.
fn webhook_url(at: SocketAddr) -> String {
    format!("http://{at}{}", crate::signing::webhook::PATH)
}

/// Writes the client profile once the listeners are bound, and prints where they are.
pub fn write_profile(dir: &Path, bound: Listening) -> anyhow::Result<()> {
    write_node_profile(dir, bound, None)
}

/// As [`write_profile`], for replica `node` of a cluster on `dir` (`None`: one node):
/// its endpoint is kept in DIR/replicas/NODE, and the profile lists every replica's
/// (a replica that stopped stays listed: the client moves past it).
pub fn write_node_profile(dir: &Path, bound: Listening, node: Option<&str>) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let _writing = lock(&dir)?;
    let replicas = match node {
        None => Vec::new(),
        Some(node) => {
            let folder = dir.join("replicas");
            fs::create_dir_all(&folder)?;
            fs::write(folder.join(node), format!("https://{}\n", bound.grpc))?;
            let mut names: Vec<PathBuf> = fs::read_dir(&folder)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            names.sort();
            let mut endpoints = Vec::new();
            for n in names {
                let text = fs::read_to_string(&n)?;
                endpoints.push(text.trim().to_string());
            }
            endpoints
        }
    };
    let profile = profile_text(&dir, bound, replicas)?;
    let path = dir.join("client.toml");
    let tmp = dir.join("client.toml.tmp");
    fs::write(&tmp, profile)?;
    fs::rename(&tmp, &path)?;
    let metrics = match bound.metrics {
        Some(m) => format!("; metrics on http://{m}/metrics"),
        None => String::new(),
    };
    let webhook = match bound.webhook {
        Some(w) => format!("; registry webhook on {}", webhook_url(w)),
        None => String::new(),
    };
    let node = node.map(|n| format!(" (node {n})")).unwrap_or_default();
    println!(
        "hsmd dev listening on https://{}{node}{metrics}{webhook}; client profile {}",
        bound.grpc,
        path.display()
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Holds DIR/.lock (an exclusive `flock`) while the result lives: replicas that start
/// together on one folder provision it, and write its profile, one at a time.
fn lock(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .with_context(|| format!("open {}/.lock", dir.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}/.lock: {e}", dir.display()))
}

/// Finds the SoftHSM2 module, installing the Debian packages when it is missing.
fn ensure_softhsm() -> anyhow::Result<PathBuf> {
    if let Some(m) = find_module() {
        return Ok(m);
    }
    eprintln!("hsmd dev: SoftHSM2 is not installed; installing softhsm2 and opensc with apt-get");
    apt_get(&["update"])?;
    apt_get(&["install", "-y", "softhsm2", "opensc"])?;
    find_module().context("softhsm2 installed but libsofthsm2.so not found")
}

/// `apt-get ARGS` (through sudo when not root), non-interactive.
fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = Command::new(if root { "apt-get" } else { "sudo" });
    if !root {
        cmd.arg("apt-get");
    }
    let status = cmd
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "`apt-get {}` failed; run it as root (after apt-get update)",
            args.join(" ")
        ),
    }
}

fn find_module() -> Option<PathBuf> {
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Initializes a fresh token in the first free slot and sets its user PIN.
fn init_token(module: &Path, pin_file: &Path) -> anyhow::Result<()> {
    let pin = random_pin();
    let so_pin = random_pin();
    crate::hsm::provision::init_token(module, DEV_TOKEN_LABEL, &so_pin, &pin)
        .context("initialize the dev token")?;
    write_secret(pin_file, pin.expose_secret())?;
    write_secret(&pin_file.with_file_name("so-pin"), so_pin.expose_secret())?;
    Ok(())
}

fn random_pin() -> SecretString {
    SecretString::from(uuid::Uuid::new_v4().simple().to_string())
}

/// Writes a file readable by its owner only (0600).
pub(crate) fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("valid TOML")
    }

    fn path(t: &toml::Table, section: &str, key: &str) -> PathBuf {
        PathBuf::from(t[section][key].as_str().expect("a string"))
    }

    #[test]
    fn config_has_the_keys_and_values_hsmd_reads() {
        let text = config_text(
            Path::new("/data/dev"),
            Path::new("/usr/lib/softhsm/libsofthsm2.so"),
            Some(PathBuf::from("/data/dev/softhsm2.conf")),
            "127.0.0.1:0",
            None,
            None,
        )
        .unwrap();
        assert!(text.starts_with("# Written by `hsmd dev`"), "{text}");
        let expected = r#"
            listen = "127.0.0.1:0"
            [hsm]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "hsmd-dev"
            pin_file = "/data/dev/pin"
            softhsm2_conf = "/data/dev/softhsm2.conf"
            [store]
            path = "/data/dev/hsmd.db"
            [audit]
            path = "/data/dev/audit/audit.log"
            [tls]
            cert = "/data/dev/tls/server.pem"
            key = "/data/dev/tls/server.key"
            client_ca = "/data/dev/tls/ca.pem"
            [[policy.rules]]
            principals = ["spiffe://hsmd.dev/admin"]
            actions = ["*"]
            keys = ["*"]
        "#;
        assert_eq!(table(&text), table(expected), "{text}");
    }

    #[test]
    fn quotes_and_backslashes_in_the_data_dir_survive() {
        let dir = Path::new(r#"/tmp/a "quoted" dir\with\backslashes"#);
        let module = Path::new(r#"/opt/so"ft\hsm.so"#);
        let t = table(
            &config_text(
                dir,
                module,
                Some(dir.join("softhsm2.conf")),
                "127.0.0.1:0",
                None,
                None,
            )
            .unwrap(),
        );
        assert_eq!(path(&t, "hsm", "module"), module);
        assert_eq!(path(&t, "hsm", "pin_file"), dir.join("pin"));
        assert_eq!(path(&t, "hsm", "softhsm2_conf"), dir.join("softhsm2.conf"));
        assert_eq!(path(&t, "store", "path"), dir.join("hsmd.db"));
        assert_eq!(path(&t, "audit", "path"), dir.join("audit/audit.log"));
        assert_eq!(path(&t, "tls", "cert"), dir.join("tls/server.pem"));
        assert_eq!(path(&t, "tls", "key"), dir.join("tls/server.key"));
        assert_eq!(path(&t, "tls", "client_ca"), dir.join("tls/ca.pem"));

        let addr: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let bound = |metrics, webhook| Listening {
            grpc: addr,
            metrics,
            webhook,
        };
        let p = table(&profile_text(dir, bound(None, None), vec![]).unwrap());
        assert_eq!(p["endpoint"].as_str(), Some("https://127.0.0.1:40123"));
        assert!(p.get("metrics_endpoint").is_none());
        let m: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let p = table(&profile_text(dir, bound(Some(m), None), vec![]).unwrap());
        assert_eq!(
            p["metrics_endpoint"].as_str(),
            Some("http://127.0.0.1:9464")
        );
        let t = table(
            &config_text(dir, module, None, "127.0.0.1:0", Some("127.0.0.1:0"), None).unwrap(),
        );
        assert_eq!(t["metrics"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(p["server_name"].as_str(), Some("localhost"));
        for (key, file) in [
            ("ca_cert", "tls/ca.pem"),
            ("client_cert", "tls/client.pem"),
            ("client_key", "tls/client.key"),
        ] {
            assert_eq!(p[key].as_str().map(PathBuf::from), Some(dir.join(file)));
        }
    }

    #[test]
    fn token_names_parse() {
        assert_eq!("tpm".parse::<DevToken>(), Ok(DevToken::Tpm));
        assert_eq!("softhsm".parse::<DevToken>(), Ok(DevToken::Softhsm));
        assert_eq!(DevToken::default(), DevToken::Softhsm);
        assert!(
            "luna"
                .parse::<DevToken>()
                .unwrap_err()
                .contains("softhsm or tpm")
        );
    }

    #[test]
    fn a_folder_keeps_its_token() {
        let dir = std::env::temp_dir().join(format!("hsmd-dev-token-{}", std::process::id()));
        fs::create_dir_all(dir.join("tpm")).unwrap();
        assert!(check_same_token(&dir, DevToken::Tpm).is_ok());
        let e = check_same_token(&dir, DevToken::Softhsm).unwrap_err();
        assert!(e.to_string().contains("--token tpm"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tpm_config_has_no_softhsm2_conf() {
        let t = table(
            &config_text(
                Path::new("/d"),
                Path::new("/m.so"),
                None,
                "127.0.0.1:0",
                None,
                None,
            )
            .unwrap(),
        );
        assert!(t["hsm"].get("softhsm2_conf").is_none(), "{t:?}");
        assert_eq!(path(&t, "hsm", "module"), Path::new("/m.so"));
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        assert!(config_text(dir, Path::new("/m.so"), None, "127.0.0.1:0", None, None).is_err());
    }
}
