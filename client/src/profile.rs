//! Client profiles: where hsmd listens and which certificates to use.
//!
//! A profile is a small TOML file (`hsmd dev` writes one) naming the endpoint, the TLS
//! server name and three PEM files. Relative paths are resolved against the profile's
//! folder, so a profile and its certificates can be moved together.
//!
//! One hsmd is named by `endpoint = "https://HOST:PORT"`; several replicas of one
//! cluster by `endpoints = ["https://A:PORT", "https://B:PORT"]` (the client starts on
//! the first and fails over to the next, see [`crate::Client`]). A profile has exactly
//! one of the two keys. Every endpoint shares `server_name`, `ca_cert`, `client_cert`
//! and `client_key`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the profile file; wins over the default location.
pub const PROFILE_ENV: &str = "HSMCTL_PROFILE";

/// Location of the profile below the data home (`$XDG_DATA_HOME` or `~/.local/share`).
const PROFILE_UNDER_DATA_HOME: &str = "hsmd/dev/client.toml";

/// How to reach and authenticate to hsmd: one daemon, or the replicas of a cluster.
///
/// In TOML unknown keys are refused, and exactly one of `endpoint` and `endpoints` must
/// be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProfileFile", into = "ProfileFile")]
pub struct Profile {
    /// gRPC endpoint, e.g. `https://127.0.0.1:40123`: the profile's `endpoint`, or the
    /// first of its `endpoints` (the one the client starts on).
    pub endpoint: String,
    /// The profile's `endpoints` (replicas of one cluster, in the order the client tries
    /// them); empty when the profile names one `endpoint`. Which endpoints a client uses
    /// is [`Profile::endpoint_list`].
    pub endpoints: Vec<String>,
    /// Name the server certificate must carry, e.g. `localhost`.
    pub server_name: String,
    /// PEM file with the CA certificate(s) that sign the server certificate.
    pub ca_cert: PathBuf,
    /// PEM file with the client certificate (chain).
    pub client_cert: PathBuf,
    /// PEM file with the client certificate's private key.
    pub client_key: PathBuf,
    /// How typed calls retry (optional `[retry]` table; see [`crate::RetryPolicy`]).
    pub retry: crate::RetryPolicy,
    /// The daemon's plain-HTTP metrics endpoint (`http://HOST:PORT`), when it has one
    /// (`hsmd dev --metrics-listen`). Informational: hsmctl does not use it.
    pub metrics_endpoint: Option<String>,
    /// Where the daemon takes the registry's push notifications
    /// (`http://HOST:PORT/registry/events`), when it has a registry (`hsmd dev
    /// --registry`): the URL to put in the registry's `notifications` endpoint.
    /// Informational: hsmctl does not use it.
    pub webhook_endpoint: Option<String>,
}

/// A profile file as written: [`Profile`]'s keys, with `endpoint` and `endpoints` both
/// optional (exactly one must be given). Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<String>>,
    server_name: String,
    ca_cert: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    #[serde(default)]
    retry: crate::RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook_endpoint: Option<String>,
}

impl TryFrom<ProfileFile> for Profile {
    type Error = String;

    fn try_from(f: ProfileFile) -> Result<Profile, String> {
        let (endpoint, endpoints) = match (f.endpoint, f.endpoints) {
            (Some(_), Some(_)) => {
                return Err("`endpoint` and `endpoints` are both given: keep one \
                            (`endpoints = [...]` for several replicas)"
                    .into());
            }
            (None, None) => {
                return Err("no endpoint: give `endpoint = \"https://HOST:PORT\"` or \
                            `endpoints = [\"https://HOST:PORT\", ...]`"
                    .into());
            }
            (Some(e), None) => (e, Vec::new()),
            (None, Some(list)) => match list.first() {
                Some(first) => (first.clone(), list),
                None => return Err("`endpoints` is empty: name at least one endpoint".into()),
            },
        };
        Ok(Profile {
            endpoint,
            endpoints,
            server_name: f.server_name,
            ca_cert: f.ca_cert,
            client_cert: f.client_cert,
            client_key: f.client_key,
            retry: f.retry,
            metrics_endpoint: f.metrics_endpoint,
            webhook_endpoint: f.webhook_endpoint,
        })
    }
}

impl From<Profile> for ProfileFile {
    /// Writes `endpoints` when the profile still uses its list, else `endpoint` (so a
    /// profile pinned to one endpoint reads back pinned).
    fn from(p: Profile) -> ProfileFile {
        let listed = p.uses_list();
        ProfileFile {
            endpoint: (!listed).then_some(p.endpoint),
            endpoints: listed.then_some(p.endpoints),
            server_name: p.server_name,
            ca_cert: p.ca_cert,
            client_cert: p.client_cert,
            client_key: p.client_key,
            retry: p.retry,
            metrics_endpoint: p.metrics_endpoint,
            webhook_endpoint: p.webhook_endpoint,
        }
    }
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
    /// The profile file is not valid TOML, has unknown/missing fields, or names no
    /// endpoint (or both `endpoint` and `endpoints`).
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

    /// The endpoints a client uses, in the order it tries them: the `endpoints` list
    /// when the profile has one and `endpoint` is still its first entry; otherwise
    /// `endpoint` alone. So giving `endpoint` another value (as [`Profile::set_endpoint`]
    /// and `hsmctl --endpoint` do, and as older programs do by assigning the field) pins
    /// the client to that one endpoint.
    pub fn endpoint_list(&self) -> Vec<&str> {
        if self.uses_list() {
            self.endpoints.iter().map(String::as_str).collect()
        } else {
            vec![self.endpoint.as_str()]
        }
    }

    /// Makes `endpoint` the one endpoint of this profile (the list is dropped); the TLS
    /// settings stay.
    pub fn set_endpoint(&mut self, endpoint: impl Into<String>) {
        self.endpoint = endpoint.into();
        self.endpoints.clear();
    }

    /// Whether [`Profile::endpoint_list`] is the `endpoints` list.
    fn uses_list(&self) -> bool {
        self.endpoints.first() == Some(&self.endpoint)
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

    /// The TLS part every profile test shares.
    const TLS: &str = r#"
        server_name = "localhost"
        ca_cert = "ca.pem"
        client_cert = "c.pem"
        client_key = "k.pem"
    "#;

    fn parse(endpoints: &str) -> Result<Profile, ProfileError> {
        Profile::parse(&format!("{endpoints}\n{TLS}"), Path::new("/d/p.toml"))
    }

    #[test]
    fn endpoint_alone_is_one_endpoint() {
        let p = parse(r#"endpoint = "https://a:8443""#).unwrap();
        assert_eq!(p.endpoint, "https://a:8443");
        assert!(p.endpoints.is_empty());
        assert_eq!(p.endpoint_list(), ["https://a:8443"]);
        assert_eq!(p.ca_cert, PathBuf::from("/d/ca.pem"));
    }

    #[test]
    fn endpoints_list_the_replicas_in_order() {
        let p = parse(r#"endpoints = ["https://a:8443", "https://b:8443"]"#).unwrap();
        assert_eq!(
            p.endpoint, "https://a:8443",
            "the first is where a client starts"
        );
        assert_eq!(p.endpoint_list(), ["https://a:8443", "https://b:8443"]);
        assert_eq!(
            p.client_key,
            PathBuf::from("/d/k.pem"),
            "shared TLS settings"
        );
        let one = parse(r#"endpoints = ["https://a:8443"]"#).unwrap();
        assert_eq!(one.endpoint_list(), ["https://a:8443"]);
    }

    #[test]
    fn endpoint_and_endpoints_together_or_neither_are_refused() {
        let both = parse(
            r#"endpoint = "https://a:8443"
               endpoints = ["https://a:8443", "https://b:8443"]"#,
        )
        .unwrap_err();
        assert!(matches!(both, ProfileError::Parse { .. }), "{both}");
        let text = both.to_string();
        assert!(
            text.contains("`endpoint` and `endpoints` are both given"),
            "{text}"
        );
        let neither = parse("").unwrap_err().to_string();
        assert!(neither.contains("no endpoint"), "{neither}");
        assert!(neither.contains("`endpoints = ["), "{neither}");
        let empty = parse("endpoints = []").unwrap_err().to_string();
        assert!(empty.contains("`endpoints` is empty"), "{empty}");
        let typo = parse(r#"endpoint_list = ["https://a:1"]"#).unwrap_err();
        assert!(typo.to_string().contains("endpoint_list"), "{typo}");
    }

    #[test]
    fn set_endpoint_pins_one_endpoint_and_round_trips() {
        let mut p = parse(r#"endpoints = ["https://a:8443", "https://b:8443"]"#).unwrap();
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("endpoints = ["), "{text}");
        assert!(!text.contains("endpoint ="), "{text}");
        assert_eq!(toml::from_str::<Profile>(&text).unwrap(), p);

        p.set_endpoint("https://c:8443");
        assert_eq!(p.endpoint_list(), ["https://c:8443"]);
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("endpoint = \"https://c:8443\""), "{text}");
        assert!(!text.contains("endpoints"), "{text}");
        assert_eq!(toml::from_str::<Profile>(&text).unwrap(), p);

        // Assigning the field, as programs written for one endpoint do, pins it too.
        let mut p = parse(r#"endpoints = ["https://a:8443", "https://b:8443"]"#).unwrap();
        p.endpoint = "https://proxy:1".into();
        assert_eq!(p.endpoint_list(), ["https://proxy:1"]);
    }
}
