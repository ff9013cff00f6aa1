//! The connection: one TLS channel to hsmd, shared by the service clients, and the
//! retry policy of the typed calls.
//!
//! A tonic `Channel` multiplexes calls over one HTTP/2 connection and is cheap to clone,
//! so the accessors hand out fresh generated clients over the same channel. The typed
//! convenience methods live in `calls.rs`; they retry as `retry.rs` says (the raw
//! generated clients do not).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;
use crate::profile::{Profile, ProfileError};
use crate::retry::{self, RetryNotice, RetryPolicy};
use crate::v1::audit_service_client::AuditServiceClient;
use crate::v1::certificate_service_client::CertificateServiceClient;
use crate::v1::image_signing_service_client::ImageSigningServiceClient;
use crate::v1::key_service_client::KeyServiceClient;
use crate::v1::signing_policy_service_client::SigningPolicyServiceClient;
use crate::v1::token_service_client::TokenServiceClient;

/// How long to wait for TCP + TLS + HTTP/2 set-up before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called before each retry (e.g. to print it).
pub type RetryObserver = Arc<dyn Fn(&RetryNotice) + Send + Sync>;

/// A connection to one hsmd. Clone it freely: clones share the channel and the retry
/// counter.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    retry: RetryPolicy,
    retries: Arc<AtomicU64>,
    observer: Option<RetryObserver>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("channel", &self.channel)
            .field("retry", &self.retry)
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the profile's endpoint over mutual TLS: the server certificate must
    /// chain to `ca_cert` and carry `server_name`; `client_cert`/`client_key` identify us.
    pub async fn connect(profile: &Profile) -> Result<Client, ClientError> {
        // tonic builds its rustls config with ring itself, but anything else in the
        // process using rustls needs a default provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = endpoint(profile).await?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::connect(&profile.endpoint, &e))?;
        Ok(Client::from_channel(channel).with_retry(profile.retry.clone()))
    }

    /// Wraps an existing channel (e.g. one built with custom settings), with the
    /// default retry policy.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            channel,
            retry: RetryPolicy::default(),
            retries: Arc::default(),
            observer: None,
        }
    }

    /// Sets the retry policy of the typed calls.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// Calls `observer` before every retry.
    pub fn with_retry_observer(mut self, observer: RetryObserver) -> Client {
        self.observer = Some(observer);
        self
    }

    /// The retry policy of the typed calls.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Retries made so far by this client and its clones.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs one call under the retry policy: `f` makes a fresh try each time it is
    /// called (e.g. `|| { let mut c = client.keys(); let r = req.clone(); async move {
    /// c.sign(r).await } }`); `call` names it for observers.
    pub async fn with_retries<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let notify = |n: &RetryNotice| {
            self.retries.fetch_add(1, Ordering::Relaxed);
            if let Some(o) = &self.observer {
                o(n);
            }
        };
        retry::run(&self.retry, call, &notify, f)
            .await
            .map_err(ClientError::from)
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// A KeyService client over the shared channel.
    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel.clone())
    }

    /// An AuditService client over the shared channel.
    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel.clone())
    }

    /// A TokenService client over the shared channel.
    pub fn token(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    /// A CertificateService client over the shared channel.
    pub fn certs(&self) -> CertificateServiceClient<Channel> {
        CertificateServiceClient::new(self.channel.clone())
    }

    /// A SigningPolicyService client (image signature policies) over the shared channel.
    pub fn policies(&self) -> SigningPolicyServiceClient<Channel> {
        SigningPolicyServiceClient::new(self.channel.clone())
    }

    /// An ImageSigningService client (signing and verifying images) over the shared
    /// channel.
    pub fn images(&self) -> ImageSigningServiceClient<Channel> {
        ImageSigningServiceClient::new(self.channel.clone())
    }
}

/// The tonic endpoint for a profile, with its TLS settings and certificates loaded.
async fn endpoint(profile: &Profile) -> Result<Endpoint, ClientError> {
    let uri = endpoint_uri(&profile.endpoint)?;
    let ca = read_pem("ca_cert", &profile.ca_cert).await?;
    let cert = read_pem("client_cert", &profile.client_cert).await?;
    let key = read_pem("client_key", &profile.client_key).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(profile.server_name.clone());
    Endpoint::from_shared(uri)
        .and_then(|e| e.connect_timeout(CONNECT_TIMEOUT).tls_config(tls))
        .map_err(|e| ClientError::connect(&profile.endpoint, &e))
}

/// Normalizes an endpoint: `host:port` gets `https://`; `http://` is refused because
/// hsmd only speaks TLS.
fn endpoint_uri(endpoint: &str) -> Result<String, ProfileError> {
    let bad = |problem: &str| ProfileError::Endpoint {
        endpoint: endpoint.to_string(),
        problem: problem.to_string(),
    };
    let uri = match endpoint.split_once("://") {
        None => format!("https://{endpoint}"),
        Some(("https", _)) => endpoint.to_string(),
        Some(_) => return Err(bad("hsmd only speaks TLS: use https://host:port")),
    };
    if uri.len() <= "https://".len() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

async fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ProfileError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ProfileError::ReadPem {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_gets_https_and_refuses_plaintext() {
        assert_eq!(
            endpoint_uri("127.0.0.1:40123").unwrap(),
            "https://127.0.0.1:40123"
        );
        assert_eq!(
            endpoint_uri("https://localhost:1").unwrap(),
            "https://localhost:1"
        );
        assert!(endpoint_uri("http://127.0.0.1:1").is_err());
        assert!(endpoint_uri("https://").is_err());
    }
}
