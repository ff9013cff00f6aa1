//! [`Instance`]: what a test sees of one running hsmd, however it was started (a child
//! process, [`crate::Daemon`], or inside the test process, [`crate::InProcess`]): its
//! temporary data folder and a TLS channel as the dev admin. The client helpers (the
//! service clients here, the audit log in `audit`, the token through pkcs11-tool in
//! `pkcs11`, refusals in `status`, certificates in `certs`) live on this type, so both
//! harnesses offer the same ones; each harness dereferences to its `Instance`.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Once,
    time::Duration,
};

use hsmd_proto::v1::{
    audit_service_client::AuditServiceClient, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::profile::Profile;
use crate::tools;

/// The dev client's principal (SAN URI of `DIR/tls/client.pem`).
pub const ADMIN_PRINCIPAL: &str = "spiffe://hsmd.dev/admin";

/// A running hsmd's temporary folder (the data folder `DIR` is `data` in it) and its
/// connection. Dropping it removes the folder, unless a test is failing and
/// `E2E_KEEP` is set.
pub struct Instance {
    pub(crate) root: Option<TempDir>,
    pub(crate) data_dir: PathBuf,
    pub(crate) profile: Option<Profile>,
    pub(crate) channel: Option<Channel>,
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another crate may have installed one already; either way ring is in use.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Instance {
    /// A fresh temporary folder, nothing running yet. Checks the external tools first.
    pub(crate) fn fresh() -> Instance {
        tools::require_tools();
        install_crypto_provider();
        let root = tempfile::Builder::new()
            .prefix("hsmd-e2e-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = root.path().join("data");
        Instance {
            root: Some(root),
            data_dir,
            profile: None,
            channel: None,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        self.root.as_ref().expect("root dir").path()
    }

    /// The data folder `hsmd dev` provisioned.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch folder for the test's own files (outside the data folder).
    pub fn scratch(&self) -> PathBuf {
        let dir = self.root().join("scratch");
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// The parsed client profile of the current run.
    pub fn profile(&self) -> &Profile {
        self.profile.as_ref().expect("daemon is running")
    }

    /// `DIR/audit/audit.log`.
    pub fn audit_log_path(&self) -> PathBuf {
        self.data_dir.join("audit").join("audit.log")
    }

    /// The user PIN from `DIR/pin`.
    pub fn pin(&self) -> String {
        let path = self.data_dir.join("pin");
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Opens a TLS channel to the daemon with the given client certificate and key (PEM),
    /// trusting the daemon's CA. Used for certificates other than the dev client's.
    pub async fn connect_as(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Channel, tonic::transport::Error> {
        connect_with(cert_pem, key_pem, self.profile(), |e| e).await
    }

    /// A new TLS channel (a connection of its own) as the dev client, with the endpoint's
    /// settings changed by `tune` (for example HTTP/2 window sizes; `|e| e` for none).
    pub async fn connect_admin(
        &self,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        connect_admin(self.profile(), tune).await
    }

    /// Tries to open a TLS channel without any client certificate.
    pub async fn connect_anonymous(&self) -> Result<Channel, tonic::transport::Error> {
        let profile = self.profile();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&profile.ca_cert)))
            .domain_name(profile.server_name.clone());
        Channel::from_shared(profile.endpoint.clone())
            .expect("endpoint is a URI")
            .tls_config(tls)?
            .timeout(Duration::from_secs(30))
            .connect()
            .await
    }

    /// The channel of the dev client (principal [`ADMIN_PRINCIPAL`]).
    pub fn channel(&self) -> Channel {
        self.channel.clone().expect("daemon is running")
    }

    /// A KeyService client as the dev admin.
    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel())
    }

    /// An AuditService client as the dev admin.
    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel())
    }

    /// A TokenService client as the dev admin.
    pub fn token(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel())
    }
}

/// Connects as the dev client of `profile` (its certificate and key files), the endpoint
/// changed by `tune`.
pub(crate) async fn connect_admin(
    profile: &Profile,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let cert = read(&profile.client_cert);
    let key = read(&profile.client_key);
    connect_with(&cert, &key, profile, tune).await
}

async fn connect_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    profile: &Profile,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&profile.ca_cert)))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(profile.server_name.clone());
    let endpoint = Channel::from_shared(profile.endpoint.clone())
        .expect("endpoint is a URI")
        .tls_config(tls)?
        .timeout(Duration::from_secs(120));
    tune(endpoint).connect().await
}

pub(crate) fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking()
            && std::env::var_os("E2E_KEEP").is_some()
            && let Some(root) = self.root.take()
        {
            eprintln!("---- kept {}", root.keep().display());
        }
    }
}
