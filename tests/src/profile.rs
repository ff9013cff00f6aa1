//! The client profile `hsmd dev` writes (`DIR/client.toml`): where the daemon listens
//! and which certificates a client presents.

use std::path::PathBuf;

/// The contents of `DIR/client.toml`.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The endpoint, or the first of `endpoints`.
    pub endpoint: String,
    /// Every replica's endpoint (`endpoints = [...]`, a cluster); empty for one node.
    pub endpoints: Vec<String>,
    pub server_name: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// `http://HOST:PORT` of the metrics listener (`hsmd dev --metrics-listen`).
    pub metrics_endpoint: Option<String>,
}

impl Profile {
    pub(crate) fn parse(text: &str) -> Result<Profile, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
        let field = |name: &str| -> Result<String, String> {
            table
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("no string field `{name}`"))
        };
        let endpoints: Vec<String> = table
            .get("endpoints")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let endpoint = match endpoints.first() {
            Some(first) => first.clone(),
            None => field("endpoint")?,
        };
        Ok(Profile {
            endpoint,
            endpoints,
            server_name: field("server_name")?,
            ca_cert: field("ca_cert")?.into(),
            client_cert: field("client_cert")?.into(),
            client_key: field("client_key")?.into(),
            metrics_endpoint: field("metrics_endpoint").ok(),
        })
    }
}
