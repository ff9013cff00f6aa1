//! Putting the daemon together: open the token, the store and the audit log (with the
//! token's audit key signing its checkpoints), reconcile, start the lifecycle task,
//! listen with TLS 1.3 and client certificates, reload the policy on SIGHUP, and serve
//! (each call in a task of its own, so it runs to its audit record even if the client
//! goes away) until SIGINT/SIGTERM, then seal the audit log with a last checkpoint.
//!
//! Beside it: `tls.rs` (the listener's TLS), `sweep.rs` (reconciliation and the
//! lifecycle sweep), `side.rs` (the listeners beside gRPC: `[metrics] listen` serves
//! `/metrics` and `/healthz` over plain HTTP, `[kubernetes]` the KMS v2 plugin on its
//! Unix socket).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hsmd_proto::v1::audit_service_server::AuditServiceServer;
use hsmd_proto::v1::certificate_service_server::CertificateServiceServer;
use hsmd_proto::v1::image_signing_service_server::ImageSigningServiceServer;
use hsmd_proto::v1::key_service_server::KeyServiceServer;
use hsmd_proto::v1::signing_policy_service_server::SigningPolicyServiceServer;
use hsmd_proto::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;

use crate::api::ApiState;
use crate::api::audit::AuditApi;
use crate::api::certs::CertApi;
use crate::api::images::ImagesApi;
use crate::api::keys::KeyApi;
use crate::api::token::TokenApi;
use crate::audit::{AuditLog, CheckpointSigner};
use crate::auth::{Authorizer, ConnectionLimits};
use crate::config::Config;
use crate::hsm::Pkcs11Backend;
use crate::keys::KeyManager;
use crate::metrics::Metrics;

use crate::clock::{SharedClock, SystemClock};

mod coalesce;
mod side;
mod sweep;
mod tls;

use crate::store::Store;
use side::{serve_image_signing, serve_kms_plugin, serve_metrics};
pub(crate) use sweep::sweep;
use sweep::{reconcile, sweep_loop};
use tls::{tls_config, tls_incoming};

/// Principal of the records hsmd writes for its own background work.
pub(crate) use crate::domain::SYSTEM_PRINCIPAL;

/// The addresses the daemon listens on, once bound (real ports, so port 0 works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The gRPC listener (TLS).
    pub grpc: SocketAddr,
    /// The plain-HTTP metrics listener, when `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
    /// The registry's push webhook, when `[registry] webhook_listen` is set.
    pub webhook: Option<SocketAddr>,
}

/// HTTP/2 receive window of each call (bytes of request data hsmd takes ahead of
/// reading it); enough for a loopback or LAN round trip at full speed.
const STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 receive window of each connection, over all its calls.
const CONNECTION_WINDOW: u32 = 512 * 1024;
/// Calls open at once on one connection (hyper's default is unbounded).
const MAX_STREAMS: u32 = 128;

/// Runs the daemon. `on_bound` is called once the listeners are bound (with their real
/// addresses, so port 0 works) and before the first call is served.
pub async fn run(
    cfg: Config,
    on_bound: impl FnOnce(Bound) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    run_with_clock(cfg, SystemClock::shared(), on_bound).await
}

/// As [`run`], with the clock every date comes from (tests pass a `ManualClock`).
pub async fn run_with_clock(
    cfg: Config,
    clock: SharedClock,
    on_bound: impl FnOnce(Bound) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    run_until(cfg, clock, on_bound, shutdown_signal).await
}

/// As [`run_with_clock`], stopping when the future `shutdown` makes resolves instead of
/// at SIGINT/SIGTERM (a daemon inside a test process). `shutdown` is called once, just
/// before `on_bound`, so whatever it listens for counts from then on.
pub async fn run_until<S: std::future::Future<Output = ()>>(
    cfg: Config,
    clock: SharedClock,
    on_bound: impl FnOnce(Bound) -> anyhow::Result<()>,
    shutdown: impl FnOnce() -> S,
) -> anyhow::Result<()> {
    let state = open_state(&cfg, clock).await?;
    tracing::info!(rules = cfg.policy.len(), "policy loaded");
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&cfg.tls)?));
    let (acceptor_tx, acceptor_rx) = tokio::sync::watch::channel(acceptor);
    tokio::spawn(reload_on_sighup(
        state.clone(),
        cfg.source.clone(),
        acceptor_tx,
    ));
    reconcile(&state).await;
    sweep(&state).await;
    tokio::spawn(sweep_loop(state.clone(), cfg.sweep_interval));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let incoming = tls_incoming(
        listener,
        acceptor_rx,
        cfg.tls.handshake_timeout,
        state.auth.connections().clone(),
        state.running.clone(),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, true).await;
    // Both reflection versions: grpcurl before 1.9 and many tools speak only v1alpha.
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let kms = match &cfg.kubernetes {
        Some(k) => Some(serve_kms_plugin(&state, k).await?),
        None => None,
    };
    let (serving, serving_rx) = tokio::sync::watch::channel(false);
    let serving = Arc::new(serving);
    tokio::spawn(mirror_audit_health(
        state.audit.writable(),
        health.clone(),
        serving.clone(),
    ));
    let metrics_addr = match cfg.metrics.listen {
        Some(at) => Some(serve_metrics(at, &state, serving_rx).await?),
        None => None,
    };
    let webhook_addr = serve_image_signing(&cfg, &state).await?;
    let stop = shutdown();
    on_bound(Bound {
        grpc: addr,
        metrics: metrics_addr,
        webhook: webhook_addr,
    })?;
    tracing::info!(%addr, "serving");
    serving.send_replace(true);
    // /healthz says NOT_SERVING from the moment shutdown begins.
    let shutdown = async move {
        stop.await;
        serving.send_replace(false);
    };
    Server::builder()
        // What one connection may make hsmd hold of requests it has not read yet: a
        // client that sends without reading its answers stops at these windows.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .layer(crate::api::complete::RunToCompletion::layer(
            state.running.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(KeyServiceServer::new(KeyApi::new(state.clone())))
        .add_service(AuditServiceServer::new(AuditApi::new(state.clone())))
        .add_service(TokenServiceServer::new(TokenApi::new(state.clone())))
        .add_service(CertificateServiceServer::new(CertApi::new(state.clone())))
        .add_service(SigningPolicyServiceServer::new(ImagesApi::new(
            state.clone(),
        )))
        .add_service(ImageSigningServiceServer::new(ImagesApi::new(
            state.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    if let Some((stop, task, socket)) = kms {
        let _ = stop.send(true);
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "KMS plugin server failed"),
            Err(e) => tracing::error!(error = %e, "KMS plugin task failed"),
        }
        let _ = std::fs::remove_file(&socket);
    }
    match state.audit.close().await {
        Ok(head) => tracing::info!(
            sequence = head.sequence,
            "audit log sealed with a checkpoint"
        ),
        Err(e) => tracing::error!(error = %e, "final audit checkpoint not written"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC health of the services that need the token and the audit log.
async fn set_health(health: &tonic_health::server::HealthReporter, ok: bool) {
    use tonic::server::NamedService;
    let status = if ok {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in [
        <KeyServiceServer<KeyApi> as NamedService>::NAME,
        <AuditServiceServer<AuditApi> as NamedService>::NAME,
        <CertificateServiceServer<CertApi> as NamedService>::NAME,
        <SigningPolicyServiceServer<ImagesApi> as NamedService>::NAME,
        <ImageSigningServiceServer<ImagesApi> as NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Health follows the audit log: while records cannot be written (full disk, I/O error)
/// every audited call fails AUDIT_UNAVAILABLE, so the services say NOT_SERVING (gRPC
/// health and `/healthz`) until a write succeeds again.
async fn mirror_audit_health(
    mut writable: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    serving: Arc<tokio::sync::watch::Sender<bool>>,
) {
    while writable.changed().await.is_ok() {
        let ok = *writable.borrow_and_update();
        if ok {
            tracing::info!("audit log writable: health SERVING");
        } else {
            tracing::error!("audit log not writable: health NOT_SERVING until it is");
        }
        set_health(&health, ok).await;
        serving.send_replace(ok);
    }
}

/// Opens what every service shares, in start-up order: the token (and its probed
/// capabilities), the metadata store, the audit log (signed by the token's audit key),
/// the key manager and the policy.
async fn open_state(cfg: &Config, clock: SharedClock) -> anyhow::Result<ApiState> {
    let hsm_cfg = cfg.hsm.clone();
    let backend = tokio::task::spawn_blocking(move || Pkcs11Backend::open(&hsm_cfg)).await??;
    let metrics = Arc::new(Metrics::new(cfg.metrics.per_principal));
    let backend = Arc::new(backend.with_metrics(metrics.clone()));
    log_capabilities(&backend);
    let (store_cfg, node) = (cfg.store.clone(), cfg.node_id.clone());
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::connect(&store_cfg, &node))
            .await?
            .with_context(|| format!("metadata store ({})", cfg.store.describe()))?,
    );
    let signer = token_signer(&backend, &store).await?;
    let audit_cfg = cfg.audit.clone();
    let audit_clock = clock.clone();
    let audit_metrics = metrics.clone();
    let audit = tokio::task::spawn_blocking(move || {
        AuditLog::open_observed(&audit_cfg, Some(signer), audit_clock, audit_metrics)
    })
    .await??;
    let keys = Arc::new(
        KeyManager::new(backend, store.clone())
            .with_import(cfg.import)
            .with_clock(clock),
    );
    for (alg, path) in keys.import_paths() {
        match path {
            Ok(p) => {
                tracing::info!(algorithm = alg.name(), offered = true, path = %p, "import path")
            }
            Err(why) => {
                tracing::info!(algorithm = alg.name(), offered = false, path = %why, "import path")
            }
        }
    }
    let registry = match &cfg.registry {
        Some(r) => Some(crate::signing::registry::Registry::new(r).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut auth = Authorizer::new(
        cfg.policy.clone(),
        cfg.rate_limits.clone(),
        ConnectionLimits::new(cfg.tls.max_connections_per_principal),
    );
    if store.is_shared() {
        auth = auth.with_shared_limits(Arc::new(ClusterBuckets {
            store: store.clone(),
            clock: keys.clock().clone(),
        }));
    }
    Ok(ApiState {
        signer: Arc::new(crate::signing::signer::Signer::new(keys.clone(), registry)),
        keys,
        audit,
        auth: Arc::new(auth),
        metrics,
        pace: Default::default(),
        running: Default::default(),
    })
}

/// The cluster's rate-limit buckets, in the replicas' shared store.
struct ClusterBuckets {
    store: Arc<Store>,
    clock: SharedClock,
}

impl std::fmt::Debug for ClusterBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterBuckets")
    }
}

impl crate::auth::SharedBuckets for ClusterBuckets {
    fn take(
        &self,
        name: &str,
        rate: crate::auth::Rate,
        want: u32,
    ) -> Result<(u32, std::time::Duration), String> {
        let now_ms = self.clock.now_ms();
        let take = || {
            self.store
                .take_tokens(name, rate.per_second, rate.burst, want, now_ms)
        };
        // Called from a call's authorization, on the runtime: tell it this blocks.
        let (granted, wait_ms) = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(take)
            }
            _ => take(),
        }
        .map_err(|e| e.to_string())?;
        let wait = std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        Ok((granted, wait))
    }
}

/// Server reflection over hsmd's, health's and the error details' descriptors.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hsmd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Signs audit checkpoints with the token's audit key (created on first start).
struct TokenSigner(Arc<Pkcs11Backend>);

impl CheckpointSigner for TokenSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(msg);
        let raw = self
            .0
            .sign_audit_digest(&digest)
            .map_err(|e| e.to_string())?;
        crate::encoding::public::ecdsa_raw_to_der(crate::domain::spec::KeySpec::EcP256, &raw)
    }
}

/// The audit key, found or made. Replicas starting together on one token make one: the
/// find-or-create runs under a cluster-wide lock (a no-op on SQLite's one node).
async fn token_signer(
    backend: &Arc<Pkcs11Backend>,
    store: &Arc<Store>,
) -> anyhow::Result<Arc<dyn CheckpointSigner>> {
    let (b, s) = (backend.clone(), store.clone());
    tokio::task::spawn_blocking(move || {
        let _alone = s
            .exclusive_wait("audit-key")
            .context("cluster lock for the audit key")?;
        b.audit_public_key()
            .context("audit checkpoint key in the token")
    })
    .await??;
    Ok(Arc::new(TokenSigner(backend.clone())))
}

/// On SIGHUP, rereads the config file and swaps in its policy and rate limits. Calls in
/// flight finish under the policy they started with; a file that does not validate
/// keeps the old policy, and the log says why.
/// On SIGHUP: reads the config file again and puts its policy, rate limits and TLS files
/// (certificate, key, client CA, CRLs) in force; a file that fails to load keeps the
/// previous setting. Other settings need a restart.
async fn reload_on_sighup(
    state: ApiState,
    source: std::path::PathBuf,
    acceptor: tokio::sync::watch::Sender<TlsAcceptor>,
) {
    let kind = tokio::signal::unix::SignalKind::hangup();
    let Ok(mut hup) = tokio::signal::unix::signal(kind) else {
        return tracing::warn!("cannot listen for SIGHUP: policy reload disabled");
    };
    while hup.recv().await.is_some() {
        let path = source.clone();
        match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(cfg)) => {
                let rules = cfg.policy.len();
                match tls_config(&cfg.tls) {
                    Ok(tls) => {
                        acceptor.send_replace(TlsAcceptor::from(Arc::new(tls)));
                        tracing::info!(
                            crls = cfg.tls.crl.len(),
                            "TLS certificate, client CA and CRLs reloaded"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "TLS reload refused; the previous certificate, CA and CRLs stay in force")
                    }
                }
                state.auth.replace(cfg.policy, cfg.rate_limits);
                tracing::info!(file = %source.display(), rules, "policy and rate limits reloaded (other settings need a restart)");
            }
            Ok(Err(e)) => {
                tracing::error!(file = %source.display(), error = %e, "config reload refused; the previous policy stays in force")
            }
            Err(e) => tracing::error!(error = %e, "config reload task failed"),
        }
    }
}

/// Listens for SIGTERM and SIGINT from now on (so a signal that arrives before the
/// server is polled still means a clean stop) and resolves at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {},
            _ = wait(int) => {},
        }
        tracing::info!("shutting down");
    }
}

fn log_capabilities(backend: &Pkcs11Backend) {
    let d = backend.description();
    tracing::info!(label = %d.label, manufacturer = %d.manufacturer, model = %d.model, sessions = backend.pool_size(), "token ready");
    for c in &backend.capabilities().mechanisms {
        tracing::info!(mechanism = c.mechanism, supported = c.supported, use_ = %c.note, "capability");
    }
    for p in &backend.capabilities().algorithm_paths {
        tracing::info!(algorithm = p.algorithm.name(), offered = p.offered, path = %p.path, "encryption path");
    }
}
