//! Configuration: defaults < `hsmd.toml` < `HSMD_*` environment variables (figment),
//! read into `Raw*` structs that refuse unknown keys, then checked once by `validate()`
//! into the typed `Config`. A bad config stops start-up with one line naming the key
//! and the problem; after `validate()` no code handles a raw `Option`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use crate::api::kubernetes::KubernetesConfig;
use crate::audit::AuditConfig;
use crate::auth::{LimitClass, Policy, Rate, RawRule, Rule};
use crate::hsm::HsmConfig;
use crate::keys::import::{IMPORT_TOKEN_LIFETIME_SECS, ImportConfig};
use crate::store::{PgConfig, StoreConfig};

/// A config problem: the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("config {key}: {problem}")]
pub struct ConfigError {
    pub(crate) key: String,
    pub(crate) problem: String,
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    /// This replica's name in a cluster (default: the host name).
    node_id: Option<String>,
    hsm: RawHsm,
    store: RawStore,
    audit: RawAudit,
    tls: RawTls,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    lifecycle: RawLifecycle,
    #[serde(default)]
    import: RawImport,
    #[serde(default)]
    kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    registry: crate::signing::config::RawRegistry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    per_principal: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    syslog: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    socket: PathBuf,
    key: Option<String>,
    group: Option<String>,
    create_key: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    allow_host_oaep_sha256: Option<bool>,
    token_lifetime_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    checkpoint_every: Option<u64>,
    checkpoint_interval: Option<String>,
    max_file_bytes: Option<u64>,
    #[serde(default)]
    forward: RawForward,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    sign: Option<String>,
    verify: Option<String>,
    crypt: Option<String>,
    random: Option<String>,
    manage: Option<String>,
    audit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    module: PathBuf,
    token_label: String,
    pin: Option<SecretString>,
    pin_file: Option<PathBuf>,
    sessions: Option<usize>,
    softhsm2_conf: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// SQLite: the file.
    path: Option<PathBuf>,
    /// PostgreSQL: `postgres://USER@HOST:PORT/DB[?sslmode=...]`.
    url: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    pool_size: Option<usize>,
}

impl RawStore {
    fn validate(self, abs: impl Fn(PathBuf) -> PathBuf) -> Result<StoreConfig, ConfigError> {
        let url = match (self.path, self.url) {
            (Some(path), None) => {
                for (key, set) in [
                    ("store.password_file", self.password_file.is_some()),
                    ("store.ca_file", self.ca_file.is_some()),
                    ("store.pool_size", self.pool_size.is_some()),
                ] {
                    if set {
                        return Err(bad(key, "is for PostgreSQL (store.url), not SQLite"));
                    }
                }
                return Ok(StoreConfig::Sqlite(abs(path)));
            }
            (None, Some(url)) => url,
            (Some(_), Some(_)) => {
                return Err(bad(
                    "store",
                    "set path (SQLite) or url (PostgreSQL), not both",
                ));
            }
            (None, None) => return Err(bad("store", "set path (SQLite) or url (PostgreSQL)")),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "store.url",
                "must start with postgres:// (the only engine with a URL)",
            ));
        }
        PgConfig::check_url(&url).map_err(|e| bad("store.url", e))?;
        let password = match self.password_file {
            Some(f) => Some(
                crate::signing::config::read_secret(&abs(f))
                    .map_err(|e| bad("store.password_file", e))?,
            ),
            None => std::env::var("PGPASSWORD").ok().map(SecretString::from),
        };
        let ca_file = self
            .ca_file
            .map(|f| existing("store.ca_file", abs(f)))
            .transpose()?;
        let pool_size = self.pool_size.unwrap_or(16);
        if !(2..=256).contains(&pool_size) {
            return Err(bad("store.pool_size", "must be 2 to 256"));
        }
        Ok(StoreConfig::Postgres(PgConfig {
            url,
            password,
            ca_file,
            pool_size,
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    #[serde(default)]
    crl: Vec<PathBuf>,
    handshake_timeout_secs: Option<u64>,
    max_connections_per_principal: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    allowed_principals: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    sweep_interval_secs: Option<u64>,
}

/// TLS files of the server.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfig {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
    /// PEM certificate revocation lists of the client CA (`tls.crl`): a client
    /// certificate they revoke is refused at the handshake. Read again on SIGHUP.
    pub(crate) crl: Vec<PathBuf>,
    /// A connection that has not finished its TLS handshake by then is closed
    /// (`tls.handshake_timeout_secs`, 1..300, default 10).
    pub(crate) handshake_timeout: std::time::Duration,
    /// Open connections one principal may have (`tls.max_connections_per_principal`,
    /// 1..100000, default 256); past it a connection's calls are refused
    /// RESOURCE_EXHAUSTED (CONNECTION_LIMIT) and it is closed.
    pub(crate) max_connections_per_principal: usize,
}

/// The metrics listener (`[metrics]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MetricsConfig {
    /// Plain-HTTP address of `/metrics` and `/healthz`; none = no listener.
    pub(crate) listen: Option<SocketAddr>,
    /// Label call and rate-limit counters with the principal (one series per client).
    pub(crate) per_principal: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (reread on SIGHUP).
    pub(crate) source: PathBuf,
    pub(crate) listen: SocketAddr,
    pub hsm: HsmConfig,
    /// SOFTHSM2_CONF to set for the module (SoftHSM2 tokens outside the default folder).
    pub softhsm2_conf: Option<PathBuf>,
    /// The metadata store: SQLite (one node) or PostgreSQL (replicas).
    pub(crate) store: StoreConfig,
    /// This replica's name (`node_id`, default the host name).
    pub(crate) node_id: String,
    pub(crate) audit: AuditConfig,
    pub(crate) tls: TlsConfig,
    /// Who may do what (deny by default).
    pub(crate) policy: Policy,
    /// Token buckets per principal, by operation class; absent classes are unlimited.
    pub(crate) rate_limits: HashMap<LimitClass, Rate>,
    /// How often the lifecycle task looks for keys to destroy.
    pub sweep_interval: Duration,
    /// Key import settings.
    pub(crate) import: ImportConfig,
    /// The Kubernetes KMS v2 plugin socket, when configured.
    pub(crate) kubernetes: Option<KubernetesConfig>,
    /// Prometheus metrics.
    pub(crate) metrics: MetricsConfig,
    /// The OCI registry images are signed in, and its push webhook.
    pub(crate) registry: Option<crate::signing::config::RegistryConfig>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

impl Config {
    /// Reads `file` and the `HSMD_*` environment (nested keys with `__`, e.g.
    /// `HSMD_HSM__PIN_FILE`), then validates.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        if !file.exists() {
            return Err(bad(
                "--config",
                format!("{} does not exist", file.display()),
            ));
        }
        let raw: RawConfig = Figment::new()
            .merge(Toml::file(file))
            .merge(Env::prefixed("HSMD_").split("__"))
            .extract()
            .map_err(|e| {
                let key = e.path.join(".");
                bad(
                    if key.is_empty() { "file" } else { &key },
                    e.kind.to_string(),
                )
            })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut cfg = raw.validate(base)?;
        cfg.source = file.to_path_buf();
        Ok(cfg)
    }
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| bad("listen", format!("'{listen}' is not HOST:PORT")))?;
        let module = abs(self.hsm.module);
        if !module.exists() {
            return Err(bad(
                "hsm.module",
                format!("{} does not exist", module.display()),
            ));
        }
        if self.hsm.token_label.trim().is_empty() {
            return Err(bad("hsm.token_label", "must not be empty"));
        }
        let pin = match (self.hsm.pin, self.hsm.pin_file) {
            (Some(_), Some(_)) => return Err(bad("hsm.pin", "set pin or pin_file, not both")),
            (None, None) => return Err(bad("hsm.pin_file", "set pin_file (or pin)")),
            (Some(pin), None) => pin,
            (None, Some(f)) => read_pin_file(&abs(f))?,
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let sessions = self.hsm.sessions.unwrap_or(cores.max(2) * 2);
        if !(1..=256).contains(&sessions) {
            return Err(bad("hsm.sessions", "must be 1..256"));
        }
        let handshake = self.tls.handshake_timeout_secs.unwrap_or(10);
        if !(1..=300).contains(&handshake) {
            return Err(bad("tls.handshake_timeout_secs", "must be 1..300"));
        }
        let max_connections = self.tls.max_connections_per_principal.unwrap_or(256);
        if !(1..=100_000).contains(&max_connections) {
            return Err(bad(
                "tls.max_connections_per_principal",
                "must be 1..100000",
            ));
        }
        let tls = TlsConfig {
            handshake_timeout: std::time::Duration::from_secs(handshake),
            max_connections_per_principal: max_connections,
            cert: existing("tls.cert", abs(self.tls.cert))?,
            key: existing("tls.key", abs(self.tls.key))?,
            client_ca: existing("tls.client_ca", abs(self.tls.client_ca))?,
            crl: self
                .tls
                .crl
                .into_iter()
                .map(|p| existing("tls.crl", abs(p)))
                .collect::<Result<_, _>>()?,
        };
        let policy = policy(self.auth, self.policy)?;
        let rate_limits = rate_limits(self.rate_limits)?;
        let mut audit = audit(self.audit, abs)?;
        let store = self.store.validate(abs)?;
        let node_id = crate::domain::node::node_id(self.node_id).map_err(|e| bad("node_id", e))?;
        if matches!(store, StoreConfig::Postgres(_)) {
            // A replica of a cluster: its records say whose chain they are in.
            audit.node = node_id.clone();
        }
        let sweep = self.lifecycle.sweep_interval_secs.unwrap_or(60);
        if sweep == 0 {
            return Err(bad("lifecycle.sweep_interval_secs", "must be at least 1"));
        }
        let lifetime = self
            .import
            .token_lifetime_secs
            .unwrap_or(IMPORT_TOKEN_LIFETIME_SECS);
        if !(1..=IMPORT_TOKEN_LIFETIME_SECS).contains(&lifetime) {
            return Err(bad(
                "import.token_lifetime_secs",
                format!("must be 1..{IMPORT_TOKEN_LIFETIME_SECS}"),
            ));
        }
        let metrics = MetricsConfig {
            listen: self
                .metrics
                .listen
                .map(|l| {
                    l.parse().map_err(|_| {
                        bad(
                            "metrics.listen",
                            format!("'{l}' is not HOST:PORT, e.g. 127.0.0.1:9464"),
                        )
                    })
                })
                .transpose()?,
            per_principal: self.metrics.per_principal.unwrap_or(false),
        };
        let import = ImportConfig {
            token_lifetime_secs: lifetime,
            allow_host_oaep_sha256: self.import.allow_host_oaep_sha256.unwrap_or(false),
        };
        let kubernetes = self.kubernetes.map(|k| kubernetes(k, &abs)).transpose()?;
        let registry = self
            .registry
            .validate(abs)
            .map_err(|(key, problem)| bad(key, problem))?;
        Ok(Config {
            listen,
            hsm: HsmConfig {
                module,
                token_label: self.hsm.token_label,
                pin,
                sessions,
            },
            softhsm2_conf: self.hsm.softhsm2_conf.map(abs),
            source: PathBuf::new(),
            store,
            node_id,
            audit,
            tls,
            policy,
            rate_limits,
            sweep_interval: Duration::from_secs(sweep),
            import,
            kubernetes,
            metrics,
            registry,
        })
    }
}

/// The policy: `[[policy.rules]]`, plus the older `[auth] allowed_principals`, which
/// still works and means "these principals may do everything on every key".
fn policy(auth: Option<RawAuth>, policy: Option<RawPolicy>) -> Result<Policy, ConfigError> {
    let mut rules = Vec::new();
    for (i, raw) in policy
        .map(|p| p.rules)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rule = Rule::parse(raw)
            .map_err(|(field, problem)| bad(&format!("policy.rules[{i}].{field}"), problem))?;
        rules.push(rule);
    }
    if let Some(auth) = auth {
        if auth.allowed_principals.is_empty() {
            return Err(bad(
                "auth.allowed_principals",
                "empty: remove it and write [[policy.rules]]",
            ));
        }
        let all = RawRule {
            principals: auth.allowed_principals,
            actions: vec!["*".into()],
            keys: Some(vec!["*".into()]),
        };
        rules.push(Rule::parse(&all).map_err(|(_, p)| bad("auth.allowed_principals", p))?);
    }
    if rules.is_empty() {
        return Err(bad(
            "policy.rules",
            "no rule: deny by default means no client could call",
        ));
    }
    Ok(Policy::new(rules))
}

/// The policy part of a config file read from TOML text alone (what the fuzz target
/// `policy` feeds): the same checks `Config::load` makes of those tables.
pub(crate) fn policy_from_toml(text: &str) -> Result<Policy, ConfigError> {
    #[derive(Deserialize)]
    struct PolicyTables {
        #[serde(default)]
        auth: Option<RawAuth>,
        #[serde(default)]
        policy: Option<RawPolicy>,
        #[serde(default)]
        rate_limits: RawRateLimits,
    }
    let raw: PolicyTables = Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| bad("file", e.kind.to_string()))?;
    rate_limits(raw.rate_limits)?;
    policy(raw.auth, raw.policy)
}

/// Default key of the KMS plugin.
pub const DEFAULT_KMS_KEY: &str = "alias/k8s-secrets";

fn kubernetes(
    raw: RawKubernetes,
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<KubernetesConfig, ConfigError> {
    if raw.socket.as_os_str().is_empty() {
        return Err(bad("kubernetes.socket", "must not be empty"));
    }
    let key = raw.key.unwrap_or_else(|| DEFAULT_KMS_KEY.to_string());
    crate::keys::KeyRef::parse(&key).map_err(|e| bad("kubernetes.key", e.to_string()))?;
    let create_key = raw.create_key.unwrap_or(false);
    if create_key && !key.starts_with("alias/") {
        return Err(bad(
            "kubernetes.create_key",
            "needs kubernetes.key to be an alias (alias/NAME) to create",
        ));
    }
    if raw.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
        return Err(bad("kubernetes.group", "must not be empty"));
    }
    Ok(KubernetesConfig {
        socket: abs(raw.socket),
        key,
        group: raw.group,
        create_key,
    })
}

fn rate_limits(raw: RawRateLimits) -> Result<HashMap<LimitClass, Rate>, ConfigError> {
    let mut out = HashMap::new();
    for (class, text) in [
        (LimitClass::Sign, raw.sign),
        (LimitClass::Verify, raw.verify),
        (LimitClass::Crypt, raw.crypt),
        (LimitClass::Random, raw.random),
        (LimitClass::Manage, raw.manage),
        (LimitClass::Audit, raw.audit),
    ] {
        if let Some(t) = text {
            let rate =
                Rate::parse(&t).map_err(|p| bad(&format!("rate_limits.{}", class.name()), p))?;
            out.insert(class, rate);
        }
    }
    Ok(out)
}

fn audit(raw: RawAudit, abs: impl Fn(PathBuf) -> PathBuf) -> Result<AuditConfig, ConfigError> {
    let mut cfg = AuditConfig::at(abs(raw.path));
    if let Some(n) = raw.checkpoint_every {
        if n == 0 {
            return Err(bad("audit.checkpoint_every", "must be at least 1"));
        }
        cfg.checkpoint_every = n;
    }
    if let Some(t) = raw.checkpoint_interval {
        cfg.checkpoint_interval = parse_interval(&t).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                "audit.checkpoint_interval",
                format!("'{t}': write e.g. \"60s\", \"500ms\", \"5m\" or \"1h\" (above 0)"),
            )
        })?;
    }
    if let Some(n) = raw.max_file_bytes {
        if n != 0 && n < 4096 {
            return Err(bad(
                "audit.max_file_bytes",
                "must be 0 (never rotate) or at least 4096",
            ));
        }
        cfg.max_file_bytes = n;
    }
    if let Some(t) = raw.forward.syslog {
        cfg.forward = Some(
            audit_chain::syslog::Target::parse(&t).map_err(|p| bad("audit.forward.syslog", p))?,
        );
    }
    Ok(cfg)
}

/// `500ms`, `60s`, `5m`, `1h`.
fn parse_interval(t: &str) -> Option<Duration> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn existing(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.exists() {
        Ok(p)
    } else {
        Err(bad(key, format!("{} does not exist", p.display())))
    }
}

/// Reads a PIN file, which must not be readable by group or others.
fn read_pin_file(path: &Path) -> Result<SecretString, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| bad("hsm.pin_file", format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            "hsm.pin_file",
            format!(
                "{} must be mode 0600 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| bad("hsm.pin_file", format!("{}: {e}", path.display())))?,
    );
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(bad("hsm.pin_file", format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(pin.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_fixture(dir: &Path, extra_hsm: &str) -> PathBuf {
        write_fixture_with(dir, extra_hsm, "")
    }

    fn write_fixture_with(dir: &Path, extra_hsm: &str, extra: &str) -> PathBuf {
        for f in ["module.so", "cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\n[hsm]\nmodule = \"module.so\"\ntoken_label = \"t\"\n{extra_hsm}\n\
             [store]\npath = \"m.db\"\n[audit]\npath = \"audit.log\"\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n\
             [auth]\nallowed_principals = [\"spiffe://x\"]\n{extra}"
        );
        let path = dir.join("hsmd.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }

    #[test]
    fn valid_config_with_pin_file() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234\n").unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = write_fixture(dir.path(), "pin_file = \"pin\"");
        let cfg = Config::load(&path).unwrap();
        assert!(matches!(&cfg.store, StoreConfig::Sqlite(p) if *p == dir.path().join("m.db")));
        assert!(!cfg.node_id.is_empty());
        assert!(format!("{cfg:?}").contains("REDACTED") || !format!("{cfg:?}").contains("1234"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234").unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(&write_fixture(dir.path(), "pin_file = \"pin\"")).unwrap_err();
        assert_eq!(err.key, "hsm.pin_file");
        assert!(err.problem.contains("0600"));
        let err = Config::load(&write_fixture(
            dir.path(),
            "pin = \"1\"\npin_file = \"pin\"",
        ))
        .unwrap_err();
        assert_eq!(err.key, "hsm.pin");
        let err = Config::load(&write_fixture(dir.path(), "pin = \"1\"\nbogus = 1")).unwrap_err();
        assert!(err.problem.contains("bogus"), "{err}");
        let err = Config::load(&write_fixture(dir.path(), "")).unwrap_err();
        assert_eq!(err.key, "hsm.pin_file");
    }

    #[test]
    fn policy_limits_and_audit_settings() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "[[policy.rules]]\nprincipals = [\"spiffe://corp/pay/*\"]\nactions = [\"use\"]\n\
                     keys = [\"tag:team=pay\"]\n\
                     [rate_limits]\nsign = \"500/s burst 1000\"\n";
        let cfg = Config::load(&write_fixture_with(dir.path(), "pin = \"1\"", extra)).unwrap();
        assert_eq!(cfg.policy.len(), 2, "the rule and allowed_principals");
        assert!(
            cfg.policy
                .may("spiffe://corp/pay/api", crate::auth::Action::Sign)
        );
        assert!(
            cfg.policy
                .may("spiffe://x", crate::auth::Action::QueryAudit)
        );
        assert_eq!(cfg.rate_limits[&LimitClass::Sign].burst, 1000.0);
        assert_eq!(cfg.audit.checkpoint_every, 1000);

        let bad_rule =
            "[[policy.rules]]\nprincipals = [\"p\"]\nactions = [\"Sing\"]\nkeys = [\"*\"]\n";
        let err =
            Config::load(&write_fixture_with(dir.path(), "pin = \"1\"", bad_rule)).unwrap_err();
        assert_eq!(err.key, "policy.rules[0].actions");
        assert!(err.problem.contains("Sing"), "{err}");
        let bad_rate = "[rate_limits]\nsign = \"fast\"\n";
        let err =
            Config::load(&write_fixture_with(dir.path(), "pin = \"1\"", bad_rate)).unwrap_err();
        assert_eq!(err.key, "rate_limits.sign");
        assert_eq!(parse_interval("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_interval("2"), None);
        assert_eq!(parse_interval("2d"), None);
    }

    #[test]
    fn metrics_and_forwarding() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load(&write_fixture(dir.path(), "pin = \"1\"")).unwrap();
        assert!(cfg.metrics.listen.is_none(), "off unless set");
        assert!(!cfg.metrics.per_principal);
        assert!(cfg.audit.forward.is_none());
        let path = write_fixture_with(dir.path(), "pin = \"1\"", "");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "[audit]\npath = \"audit.log\"\n",
            "[audit]\npath = \"audit.log\"\n[audit.forward]\nsyslog = \"tcp://127.0.0.1:6514\"\n",
        );
        std::fs::write(
            &path,
            format!("{text}[metrics]\nlisten = \"127.0.0.1:9464\"\nper_principal = true\n"),
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(cfg.metrics.per_principal);
        assert_eq!(
            cfg.audit.forward,
            Some(audit_chain::syslog::Target::Tcp("127.0.0.1:6514".into()))
        );
        std::fs::write(&path, format!("{text}[metrics]\nlisten = \"nine\"\n")).unwrap();
        assert_eq!(Config::load(&path).unwrap_err().key, "metrics.listen");
        let bad_fwd = text.replace("tcp://127.0.0.1:6514", "udp://x:1");
        std::fs::write(&path, bad_fwd).unwrap();
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.key, "audit.forward.syslog");
        assert!(err.problem.contains("tcp://HOST:PORT"), "{err}");
    }
}
