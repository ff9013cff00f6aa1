//! Configuration: defaults < `hsmd.toml` < `HSMD_*` environment variables (figment),
//! read into `Raw*` structs that refuse unknown keys, then checked once by `validate()`
//! into the typed `Config`. A bad config stops start-up with one line naming the key
//! and the problem; after `validate()` no code handles a raw `Option`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use crate::hsm::HsmConfig;

/// A config problem: the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("config {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
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
    hsm: RawHsm,
    store: RawPath,
    audit: RawPath,
    tls: RawTls,
    auth: RawAuth,
    #[serde(default)]
    lifecycle: RawLifecycle,
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
struct RawPath {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
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
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub hsm: HsmConfig,
    /// SOFTHSM2_CONF to set for the module (SoftHSM2 tokens outside the default folder).
    pub softhsm2_conf: Option<PathBuf>,
    pub store_path: PathBuf,
    pub audit_path: PathBuf,
    pub tls: TlsConfig,
    pub allowed_principals: Vec<String>,
    /// How often the lifecycle task looks for keys to destroy.
    pub sweep_interval: Duration,
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
        raw.validate(base)
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
        let tls = TlsConfig {
            cert: existing("tls.cert", abs(self.tls.cert))?,
            key: existing("tls.key", abs(self.tls.key))?,
            client_ca: existing("tls.client_ca", abs(self.tls.client_ca))?,
        };
        if self.auth.allowed_principals.is_empty() {
            return Err(bad(
                "auth.allowed_principals",
                "empty: no client could call",
            ));
        }
        let sweep = self.lifecycle.sweep_interval_secs.unwrap_or(60);
        if sweep == 0 {
            return Err(bad("lifecycle.sweep_interval_secs", "must be at least 1"));
        }
        Ok(Config {
            listen,
            hsm: HsmConfig {
                module,
                token_label: self.hsm.token_label,
                pin,
                sessions,
            },
            softhsm2_conf: self.hsm.softhsm2_conf.map(abs),
            store_path: abs(self.store.path),
            audit_path: abs(self.audit.path),
            tls,
            allowed_principals: self.auth.allowed_principals,
            sweep_interval: Duration::from_secs(sweep),
        })
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
        for f in ["module.so", "cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\n[hsm]\nmodule = \"module.so\"\ntoken_label = \"t\"\n{extra_hsm}\n\
             [store]\npath = \"m.db\"\n[audit]\npath = \"audit.log\"\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n\
             [auth]\nallowed_principals = [\"spiffe://x\"]\n"
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
        assert_eq!(cfg.store_path, dir.path().join("m.db"));
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
}
