//! The `[registry]` section: which OCI registry hsmd signs images in, how it logs in,
//! and where it listens for the registry's push notifications.
//!
//! ```toml
//! [registry]
//! url = "https://registry.example:5000"   # or http:// for a registry without TLS
//! username = "hsmd"                       # basic auth (optional)
//! password_file = "/etc/hsmd/registry.pass"
//! # or: token_file = "/etc/hsmd/registry.token"   # a bearer token, sent as is
//! ca_file = "/etc/hsmd/registry-ca.pem"   # extra CA for the registry's certificate
//! webhook_listen = "127.0.0.1:5001"       # serves POST /registry/events
//! webhook_secret_file = "/etc/hsmd/webhook.secret"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistry {
    url: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    webhook_listen: Option<String>,
    webhook_secret_file: Option<PathBuf>,
}

/// The checked section.
#[derive(Debug, Clone)]
pub(crate) struct RegistryConfig {
    /// `host[:port]`: what image references and signatures name.
    pub(crate) host: String,
    /// True for an `http://` URL.
    pub(crate) plain_http: bool,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<SecretString>,
    /// A bearer token sent as `Authorization: Bearer` (instead of a username).
    pub(crate) token: Option<SecretString>,
    /// PEM of an extra CA the registry's certificate chains to.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Where the push webhook listens (none: no webhook).
    pub(crate) webhook_listen: Option<SocketAddr>,
    /// The shared secret the registry sends as `Authorization: Bearer <secret>`.
    pub(crate) webhook_secret: Option<SecretString>,
}

impl RegistryConfig {
    /// `http(s)://host[:port]`.
    pub(crate) fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// A refused setting: its key (`registry.url`...) and what is wrong.
pub(crate) type Problem = (&'static str, String);

/// Splits a registry URL into its host (with port) and whether it is plain HTTP.
pub(crate) fn parse_url(url: &str) -> Result<(String, bool), String> {
    let (plain, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        return Err(format!(
            "'{url}' is not http://HOST[:PORT] or https://HOST[:PORT]"
        ));
    };
    let host = rest.trim_end_matches('/');
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!(
            "'{url}': give only the scheme and HOST[:PORT], no path"
        ));
    }
    Ok((host.to_string(), plain))
}

/// Reads a one-line secret file (trailing newline removed); it must not be empty.
pub(crate) fn read_secret(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.trim_end_matches(['\n', '\r']);
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(line.to_string()))
}

impl RawRegistry {
    /// Checks the section; relative paths are taken from `abs`.
    pub(crate) fn validate(
        self,
        abs: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<Option<RegistryConfig>, Problem> {
        let Some(url) = self.url else {
            if self.webhook_listen.is_some() {
                return Err(("registry.url", "webhook_listen needs url".into()));
            }
            return Ok(None);
        };
        let (host, plain_http) = parse_url(&url).map_err(|e| ("registry.url", e))?;
        let password = match (&self.username, self.password_file) {
            (Some(_), Some(f)) => {
                Some(read_secret(&abs(f)).map_err(|e| ("registry.password_file", e))?)
            }
            (Some(_), None) => {
                return Err((
                    "registry.password_file",
                    "username needs password_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(("registry.username", "password_file needs username".into()));
            }
            (None, None) => None,
        };
        let token = match (&self.username, self.token_file) {
            (Some(_), Some(_)) => {
                return Err((
                    "registry.token_file",
                    "set username and password_file, or token_file, not both".into(),
                ));
            }
            (None, Some(f)) => Some(read_secret(&abs(f)).map_err(|e| ("registry.token_file", e))?),
            (_, None) => None,
        };
        let ca_pem = self
            .ca_file
            .map(|f| {
                let f = abs(f);
                std::fs::read(&f).map_err(|e| ("registry.ca_file", format!("{}: {e}", f.display())))
            })
            .transpose()?;
        let webhook_listen = self
            .webhook_listen
            .map(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|_| ("registry.webhook_listen", format!("'{l}' is not HOST:PORT")))
            })
            .transpose()?;
        let webhook_secret = match (webhook_listen, self.webhook_secret_file) {
            (Some(_), Some(f)) => {
                Some(read_secret(&abs(f)).map_err(|e| ("registry.webhook_secret_file", e))?)
            }
            (Some(_), None) => {
                return Err((
                    "registry.webhook_secret_file",
                    "webhook_listen needs a secret: the registry must send it as Authorization: Bearer <secret>".into(),
                ));
            }
            (None, _) => None,
        };
        Ok(Some(RegistryConfig {
            host,
            plain_http,
            username: self.username,
            password,
            token,
            ca_pem,
            webhook_listen,
            webhook_secret,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:5000"),
            Ok(("127.0.0.1:5000".into(), true))
        );
        assert_eq!(
            parse_url("https://r.example/"),
            Ok(("r.example".into(), false))
        );
        assert!(parse_url("r.example").is_err());
        assert!(parse_url("https://r.example/v2/x").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn sections() {
        let raw = |url: Option<&str>, listen: Option<&str>| RawRegistry {
            url: url.map(str::to_string),
            webhook_listen: listen.map(str::to_string),
            ..Default::default()
        };
        assert!(raw(None, None).validate(|p| p).unwrap().is_none());
        assert_eq!(
            raw(None, Some("127.0.0.1:1"))
                .validate(|p| p)
                .unwrap_err()
                .0,
            "registry.url"
        );
        assert_eq!(
            raw(Some("http://h:1"), Some("127.0.0.1:1"))
                .validate(|p| p)
                .unwrap_err()
                .0,
            "registry.webhook_secret_file"
        );
        let c = raw(Some("http://h:1"), None)
            .validate(|p| p)
            .unwrap()
            .unwrap();
        assert_eq!((c.host.as_str(), c.plain_http), ("h:1", true));
        assert_eq!(c.base_url(), "http://h:1");
    }
}
