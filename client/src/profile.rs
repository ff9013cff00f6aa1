//! Client profiles: where hsmd listens and which certificates to use.
//!
//! A profile is a small TOML file (`hsmd dev` writes one) naming the endpoint, the TLS
//! server name and three PEM files. Relative paths are resolved against the profile's
//! folder, so a profile and its certificates can be moved together.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the profile file; wins over the default location.
pub const PROFILE_ENV: &str = "HSMCTL_PROFILE";

/// Location of the profile below the data home (`$XDG_DATA_HOME` or `~/.local/share`).
const PROFILE_UNDER_DATA_HOME: &str = "hsmd/dev/client.toml";

/// How to reach and authenticate to one hsmd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// gRPC endpoint, e.g. `https://127.0.0.1:40123`.
    pub endpoint: String,
    /// Name the server certificate must carry, e.g. `localhost`.
    pub server_name: String,
    /// PEM file with the CA certificate(s) that sign the server certificate.
    pub ca_cert: PathBuf,
    /// PEM file with the client certificate (chain).
    pub client_cert: PathBuf,
    /// PEM file with the client certificate's private key.
    pub client_key: PathBuf,
    /// How typed calls retry (optional `[retry]` table; see [`crate::RetryPolicy`]).
    #[serde(default)]
    pub retry: crate::RetryPolicy,
    /// The daemon's plain-HTTP metrics endpoint (`http://HOST:PORT`), when it has one
    /// (`hsmd dev --metrics-listen`). Informational: hsmctl does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// Where the daemon takes the registry's push notifications
    /// (`http://HOST:PORT/registry/events`), when it has a registry (`hsmd dev
    /// --registry`): the URL to put in the registry's `notifications` endpoint.
    /// Informational: hsmctl does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_endpoint: Option<String>,
}

/// Why a profile could not be found, read or used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither `$HSMCTL_PROFILE`, `$XDG_DATA_HOME` nor `$HOME` is set.
    #[error("no profile path: set {PROFILE_ENV}, XDG_DATA_HOME or HOME, or pass --profile")]
    NoDefaultPath,
    /// The profile file could not be read.
    #[error("cannot read profile {}: {source}", path.display())]
    Read {
        /// The profile file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The profile file is not valid TOML or has unknown/missing fields.
    #[error("invalid profile {}: {source}", path.display())]
    Parse {
        /// The profile file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A PEM file named by the profile could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadPem {
        /// Which file: "ca_cert", "client_cert" or "client_key".
        what: &'static str,
        /// The file as resolved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The endpoint is not a usable `https://host:port` URI.
    #[error("invalid endpoint {endpoint:?}: {problem}")]
    Endpoint {
        /// The endpoint as written.
        endpoint: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl Profile {
    /// Reads a profile file and resolves its relative paths against the file's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses profile text; `path` is where it came from (for relative paths and errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProfileError> {
        let mut profile: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        profile.resolve_relative_to(base);
        Ok(profile)
    }

    /// Makes relative certificate paths relative to `base` instead of the working folder.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        for p in [
            &mut self.ca_cert,
            &mut self.client_cert,
            &mut self.client_key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The profile used when none is named: `$HSMCTL_PROFILE` if set, else
    /// `$XDG_DATA_HOME/hsmd/dev/client.toml`, else `$HOME/.local/share/hsmd/dev/client.toml`
    /// (where `hsmd dev` writes it by default).
    pub fn default_path() -> Result<PathBuf, ProfileError> {
        default_path_from(|name| std::env::var_os(name))
    }
}

/// [`Profile::default_path`] with the environment passed in, so it can be tested.
/// Empty variables count as unset, as the XDG base directory specification says.
fn default_path_from(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, ProfileError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(PROFILE_ENV) {
        return Ok(p);
    }
    if let Some(data) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(data.join(PROFILE_UNDER_DATA_HOME));
    }
    var("HOME")
        .map(|home| home.join(".local/share").join(PROFILE_UNDER_DATA_HOME))
        .ok_or(ProfileError::NoDefaultPath)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_path_prefers_explicit_env() {
        let vars = [
            ("HSMCTL_PROFILE", "/etc/p.toml"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            default_path_from(env(&vars)).unwrap(),
            PathBuf::from("/etc/p.toml")
        );
    }

    #[test]
    fn default_path_uses_xdg_then_home() {
        let vars = [("XDG_DATA_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(
            default_path_from(env(&vars)).unwrap(),
            PathBuf::from("/x/hsmd/dev/client.toml")
        );
        let vars = [("XDG_DATA_HOME", ""), ("HOME", "/h")];
        assert_eq!(
            default_path_from(env(&vars)).unwrap(),
            PathBuf::from("/h/.local/share/hsmd/dev/client.toml")
        );
    }

    #[test]
    fn default_path_without_any_env_is_an_error() {
        assert!(matches!(
            default_path_from(env(&[])),
            Err(ProfileError::NoDefaultPath)
        ));
    }

    #[test]
    fn relative_paths_resolve_against_profile_folder() {
        let text = r#"
            endpoint = "https://127.0.0.1:40123"
            server_name = "localhost"
            ca_cert = "ca.pem"
            client_cert = "certs/client.pem"
            client_key = "/abs/client.key"
        "#;
        let p = Profile::parse(text, Path::new("/data/dev/client.toml")).unwrap();
        assert_eq!(p.ca_cert, PathBuf::from("/data/dev/ca.pem"));
        assert_eq!(p.client_cert, PathBuf::from("/data/dev/certs/client.pem"));
        assert_eq!(p.client_key, PathBuf::from("/abs/client.key"));
        assert_eq!(p.retry, crate::RetryPolicy::default());
    }

    #[test]
    fn retry_table_is_read() {
        let text = r#"
            endpoint = "https://127.0.0.1:1"
            server_name = "localhost"
            ca_cert = "ca.pem"
            client_cert = "c.pem"
            client_key = "k.pem"
            [retry]
            max_attempts = 9
            initial_delay_ms = 10
        "#;
        let p = Profile::parse(text, Path::new("p.toml")).unwrap();
        assert_eq!(p.retry.max_attempts, 9);
        assert_eq!(p.retry.initial_delay_ms, 10);
        assert_eq!(p.retry.multiplier, 2.0);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"
            endpoint = "https://127.0.0.1:1"
            server_name = "localhost"
            ca_cert = "ca.pem"
            client_cert = "c.pem"
            client_key = "k.pem"
            pin = "1234"
        "#;
        let err = Profile::parse(text, Path::new("p.toml")).unwrap_err();
        assert!(matches!(err, ProfileError::Parse { .. }), "{err}");
    }
}
