//! The listeners beside the gRPC port: Prometheus metrics over plain HTTP, the
//! Kubernetes KMS v2 plugin on its Unix socket, and the registry's push webhook (with
//! the image-signing worker behind it).

use std::sync::Arc;

use anyhow::Context;
use hsmd_proto::kms_v2::key_management_service_server::KeyManagementServiceServer;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic::transport::Server;

use super::SYSTEM_PRINCIPAL;
use crate::api::ApiState;
use crate::api::kubernetes::{KmsPlugin, KubernetesConfig};
use crate::metrics::Metrics;
use crate::metrics::http::{Exporter, Refresh};

use super::sweep::system_record;

/// Binds the metrics listener and serves `/metrics` and `/healthz` in a task of its
/// own; `serving` mirrors the gRPC health. Each scrape first reads the key and import
/// token counts from the store.
pub(super) async fn serve_metrics(
    at: SocketAddr,
    state: &ApiState,
    serving: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("metrics.listen {at}"))?;
    let addr = listener.local_addr()?;
    let keys = state.keys.clone();
    let refresh: Refresh = Arc::new(move |m: &Metrics| match keys.store().counts(keys.now()) {
        Ok(c) => m.set_store_counts(
            &c.keys_by_state,
            c.import_tokens_live,
            c.registry_events_queued,
        ),
        Err(e) => tracing::warn!(error = %e, "metrics: store counts not read"),
    });
    let exporter = Exporter {
        metrics: state.metrics.clone(),
        serving,
        refresh,
    };
    tokio::spawn(crate::metrics::http::serve(listener, exporter));
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(addr)
}

/// Starts the image-signing worker (when a registry is configured) and binds the
/// registry's push webhook (when `[registry] webhook_listen` is set); returns the
/// webhook's address.
pub(super) async fn serve_image_signing(
    cfg: &crate::config::Config,
    state: &ApiState,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(registry) = &cfg.registry else {
        return Ok(None);
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(crate::signing::worker::run(
        state.signer.clone(),
        state.audit.clone(),
        wake.clone(),
    ));
    let (Some(at), Some(secret)) = (registry.webhook_listen, &registry.webhook_secret) else {
        return Ok(None);
    };
    let listener = crate::signing::webhook::bind(at)
        .await
        .with_context(|| format!("registry.webhook_listen {at}"))?;
    let addr = listener.local_addr()?;
    let hook = crate::signing::webhook::Webhook {
        keys: state.keys.clone(),
        audit: state.audit.clone(),
        secret: Arc::new(secret.clone()),
        wake,
    };
    tokio::spawn(crate::signing::webhook::serve(listener, hook));
    tracing::info!(%addr, registry = %registry.host, "registry webhook on http://{addr}{}", crate::signing::webhook::PATH);
    Ok(Some(addr))
}

/// A running KMS plugin server: its stop switch, its task and its socket path.
pub(super) type KmsServer = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    std::path::PathBuf,
);

/// Serves the Kubernetes KMS v2 plugin on its Unix socket (creating its key and alias
/// first when `create_key` says so), until the stop switch is thrown.
pub(super) async fn serve_kms_plugin(
    state: &ApiState,
    cfg: &KubernetesConfig,
) -> anyhow::Result<KmsServer> {
    if cfg.create_key {
        ensure_kms_key(state, cfg).await?;
    }
    let listener = crate::api::kubernetes::socket::bind(cfg)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let plugin = KeyManagementServiceServer::new(KmsPlugin::new(state.clone(), cfg));
    let task = tokio::spawn(
        Server::builder()
            // As on the gRPC port: a call the API server gives up on still runs to its
            // audit record.
            .layer(crate::api::complete::RunToCompletion::layer(
                state.running.clone(),
            ))
            .add_service(plugin)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.changed().await;
            }),
    );
    tracing::info!(socket = %cfg.socket.display(), key = %cfg.key, principal = %cfg.principal(), "serving the Kubernetes KMS v2 plugin");
    Ok((stop, task, cfg.socket.clone()))
}

/// Creates the plugin's AES-256 key with its alias when the alias is missing (dev).
async fn ensure_kms_key(state: &ApiState, cfg: &KubernetesConfig) -> anyhow::Result<()> {
    let keys = state.keys.clone();
    let alias = cfg.key.clone();
    let made = tokio::task::spawn_blocking(move || {
        if keys.store().resolve_alias(&alias)?.is_some() {
            return Ok(None);
        }
        let new = crate::keys::manager::NewKey {
            spec: crate::domain::spec::KeySpec::Aes256,
            usage: crate::domain::spec::KeyUsage::EncryptDecrypt,
            origin: crate::domain::spec::KeyOrigin::Hsm,
            alias: Some(alias),
            description: "Kubernetes Secret encryption (KMS v2 plugin)".into(),
            tags: Default::default(),
            idempotency_token: None,
            rotation_period_days: None,
        };
        keys.create(SYSTEM_PRINCIPAL, new).map(Some)
    })
    .await?;
    match made {
        Ok(Some(key)) => {
            tracing::info!(key_id = %key.id, alias = %cfg.key, "created the KMS plugin key");
            system_record(state, "hsmd/CreateKey", key.id, &Ok(Ok(()))).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "creating the KMS plugin key {}: {e}",
            cfg.key
        )),
    }
}
