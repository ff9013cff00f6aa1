//! Putting the daemon together: open the token, the store and the audit log (with the
//! token's audit key signing its checkpoints), reconcile, start the lifecycle task,
//! listen with TLS 1.3 and client certificates, reload the policy on SIGHUP, and serve
//! (each call in a task of its own, so it runs to its audit record even if the client
//! goes away) until SIGINT/SIGTERM, then seal the audit log with a last checkpoint.
//! With `[kubernetes]`, the same process also serves the KMS v2 plugin on its Unix
//! socket.
//! With `[metrics] listen`, a plain-HTTP listener serves `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hsmd_proto::kms_v2::key_management_service_server::KeyManagementServiceServer;
use hsmd_proto::v1::audit_service_server::AuditServiceServer;
use hsmd_proto::v1::certificate_service_server::CertificateServiceServer;
use hsmd_proto::v1::key_service_server::KeyServiceServer;
use hsmd_proto::v1::token_service_server::TokenServiceServer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;

use crate::api::ApiState;
use crate::api::audit::AuditApi;
use crate::api::certs::CertApi;
use crate::api::keys::KeyApi;
use crate::api::kubernetes::{KmsPlugin, KubernetesConfig};
use crate::api::token::TokenApi;
use crate::audit::{AuditEvent, AuditLog, CheckpointSigner, Outcome};
use crate::auth::Authorizer;
use crate::config::{Config, TlsConfig};
use crate::hsm::Pkcs11Backend;
use crate::keys::KeyManager;
use crate::metrics::Metrics;
use crate::metrics::http::{Exporter, Refresh};

use crate::clock::{SharedClock, SystemClock};
use crate::store::Store;

/// Principal of the records hsmd writes for its own background work.
pub(crate) use crate::domain::SYSTEM_PRINCIPAL;

/// The addresses the daemon listens on, once bound (real ports, so port 0 works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The gRPC listener (TLS).
    pub grpc: SocketAddr,
    /// The plain-HTTP metrics listener, when `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
}

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
    tokio::spawn(reload_on_sighup(state.clone(), cfg.source.clone()));
    reconcile(&state).await;
    sweep(&state).await;
    tokio::spawn(sweep_loop(state.clone(), cfg.sweep_interval));

    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&cfg.tls)?));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let incoming = tls_incoming(listener, acceptor);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KeyServiceServer<KeyApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;
    health
        .set_serving::<CertificateServiceServer<CertApi>>()
        .await;
    // Both reflection versions: grpcurl before 1.9 and many tools speak only v1alpha.
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let kms = match &cfg.kubernetes {
        Some(k) => Some(serve_kms_plugin(&state, k).await?),
        None => None,
    };
    let (serving, serving_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match cfg.metrics.listen {
        Some(at) => Some(serve_metrics(at, &state, serving_rx).await?),
        None => None,
    };
    let stop = shutdown();
    on_bound(Bound {
        grpc: addr,
        metrics: metrics_addr,
    })?;
    tracing::info!(%addr, "serving");
    serving.send_replace(true);
    // /healthz says NOT_SERVING from the moment shutdown begins.
    let shutdown = async move {
        stop.await;
        serving.send_replace(false);
    };
    Server::builder()
        .layer(tower_layer::layer_fn(crate::api::complete::RunToCompletion))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(KeyServiceServer::new(KeyApi::new(state.clone())))
        .add_service(AuditServiceServer::new(AuditApi::new(state.clone())))
        .add_service(TokenServiceServer::new(TokenApi::new(state.clone())))
        .add_service(CertificateServiceServer::new(CertApi::new(state.clone())))
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

/// Opens what every service shares, in start-up order: the token (and its probed
/// capabilities), the metadata store, the audit log (signed by the token's audit key),
/// the key manager and the policy.
async fn open_state(cfg: &Config, clock: SharedClock) -> anyhow::Result<ApiState> {
    let hsm_cfg = cfg.hsm.clone();
    let backend = tokio::task::spawn_blocking(move || Pkcs11Backend::open(&hsm_cfg)).await??;
    let metrics = Arc::new(Metrics::new(cfg.metrics.per_principal));
    let backend = Arc::new(backend.with_metrics(metrics.clone()));
    log_capabilities(&backend);
    let store = Arc::new(
        Store::open(&cfg.store_path)
            .with_context(|| format!("metadata store {}", cfg.store_path.display()))?,
    );
    let signer = token_signer(&backend).await?;
    let audit_cfg = cfg.audit.clone();
    let audit_clock = clock.clone();
    let audit_metrics = metrics.clone();
    let audit = tokio::task::spawn_blocking(move || {
        AuditLog::open_observed(&audit_cfg, Some(signer), audit_clock, audit_metrics)
    })
    .await??;
    let keys = Arc::new(
        KeyManager::new(backend, store)
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
    Ok(ApiState {
        keys,
        audit,
        auth: Arc::new(Authorizer::new(cfg.policy.clone(), cfg.rate_limits.clone())),
        metrics,
    })
}

/// Binds the metrics listener and serves `/metrics` and `/healthz` in a task of its
/// own; `serving` mirrors the gRPC health. Each scrape first reads the key and import
/// token counts from the store.
async fn serve_metrics(
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
        Ok(c) => m.set_store_counts(&c.keys_by_state, c.import_tokens_live),
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

async fn token_signer(backend: &Arc<Pkcs11Backend>) -> anyhow::Result<Arc<dyn CheckpointSigner>> {
    let b = backend.clone();
    tokio::task::spawn_blocking(move || b.audit_public_key())
        .await?
        .context("audit checkpoint key in the token")?;
    Ok(Arc::new(TokenSigner(backend.clone())))
}

/// On SIGHUP, rereads the config file and swaps in its policy and rate limits. Calls in
/// flight finish under the policy they started with; a file that does not validate
/// keeps the old policy, and the log says why.
async fn reload_on_sighup(state: ApiState, source: std::path::PathBuf) {
    let kind = tokio::signal::unix::SignalKind::hangup();
    let Ok(mut hup) = tokio::signal::unix::signal(kind) else {
        return tracing::warn!("cannot listen for SIGHUP: policy reload disabled");
    };
    while hup.recv().await.is_some() {
        let path = source.clone();
        match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(cfg)) => {
                let rules = cfg.policy.len();
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

/// Server TLS: TLS 1.3 only, a client certificate from the configured CA required.
fn tls_config(tls: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("tls.cert {}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("tls.key {}", tls.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&tls.client_ca)
        .with_context(|| format!("tls.client_ca {}", tls.client_ca.display()))?
    {
        roots.add(ca.with_context(|| format!("tls.client_ca {}", tls.client_ca.display()))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("client CA")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("server certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and runs each TLS handshake in its own task, so a slow or
/// failing handshake never holds up the others.
fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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

/// A running KMS plugin server: its stop switch, its task and its socket path.
type KmsServer = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    std::path::PathBuf,
);

/// Serves the Kubernetes KMS v2 plugin on its Unix socket (creating its key and alias
/// first when `create_key` says so), until the stop switch is thrown.
async fn serve_kms_plugin(state: &ApiState, cfg: &KubernetesConfig) -> anyhow::Result<KmsServer> {
    if cfg.create_key {
        ensure_kms_key(state, cfg).await?;
    }
    let listener = crate::api::kubernetes::socket::bind(cfg)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let plugin = KeyManagementServiceServer::new(KmsPlugin::new(state.clone(), cfg));
    let task = tokio::spawn(
        Server::builder()
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

async fn reconcile(state: &ApiState) {
    let keys = state.keys.clone();
    match tokio::task::spawn_blocking(move || keys.reconcile()).await {
        Ok(Ok(r)) => {
            tracing::info!(
                matched = r.matched,
                foreign_objects = r.foreign_objects,
                "token and store reconciled"
            );
            for id in &r.orphans {
                tracing::warn!(key_id = %id, "token holds key objects with no live key in the store (left in place; inspect and remove by hand)");
            }
            for id in &r.missing {
                tracing::error!(key_id = %id, "store has a live key whose material is missing from the token");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "reconciliation failed"),
        Err(e) => tracing::error!(error = %e, "reconciliation task failed"),
    }
}

async fn sweep_loop(state: ApiState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        sweep(&state).await;
    }
}

/// Destroys every key whose deletion date has passed, imported material whose
/// valid-to has passed (the key returns to PENDING_IMPORT), and rotates keys whose
/// automatic rotation is due, each with an audit record; then the wrapping keys of
/// superseded and expired import tokens, and those no import token names once seen for
/// a token lifetime.
pub(crate) async fn sweep(state: &ApiState) {
    let keys = state.keys.clone();
    let found = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::keys::KeyError>((
            keys.due_for_deletion()?,
            keys.expired_material()?,
            keys.due_for_rotation()?,
        ))
    })
    .await;
    let (due, expired, rotating) = match found {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return tracing::error!(error = %e, "lifecycle sweep failed"),
        Err(e) => return tracing::error!(error = %e, "lifecycle sweep task failed"),
    };
    for key in due {
        let done = "key destroyed after its deletion date";
        sweep_change(state, "hsmd/DestroyKey", key.id, done, move |m| {
            m.destroy(&key).map(drop)
        })
        .await;
    }
    for id in expired {
        let done = "imported key material destroyed at its valid-to; key is PENDING_IMPORT";
        sweep_change(state, "hsmd/ExpireKeyMaterial", id, done, move |m| {
            m.expire_material(id).map(drop)
        })
        .await;
    }
    for key in rotating {
        let done = "key rotated on its schedule";
        sweep_change(state, "hsmd/RotateKey", key.id, done, move |m| {
            m.rotate(&key).map(drop)
        })
        .await;
    }
    let keys = state.keys.clone();
    let wrapping = tokio::task::spawn_blocking(move || {
        keys.destroy_stale_wrapping_keys();
        keys.destroy_orphan_wrapping_keys()
    })
    .await;
    match wrapping {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "checking the token's wrapping keys failed"),
        Err(e) => tracing::error!(error = %e, "wrapping key sweep task failed"),
    }
}

/// One change the sweep makes on its own: runs `change` in the blocking pool, logs it
/// (`done` on success; a failure is retried at the next sweep) and audits it as `method`
/// by the principal `hsmd`.
async fn sweep_change(
    state: &ApiState,
    method: &'static str,
    id: uuid::Uuid,
    done: &'static str,
    change: impl FnOnce(&KeyManager) -> Result<(), crate::keys::KeyError> + Send + 'static,
) {
    let keys = state.keys.clone();
    let result = tokio::task::spawn_blocking(move || change(&keys)).await;
    match &result {
        Ok(Ok(())) => tracing::info!(key_id = %id, "{done}"),
        Ok(Err(e)) => {
            tracing::error!(key_id = %id, method, error = %e, "lifecycle change failed; retried next sweep")
        }
        Err(e) => tracing::error!(key_id = %id, method, error = %e, "lifecycle task failed"),
    }
    system_record(state, method, id, &result).await;
}

/// The audit record of a change hsmd made on its own (principal `hsmd`).
async fn system_record(
    state: &ApiState,
    method: &str,
    id: uuid::Uuid,
    result: &Result<Result<(), crate::keys::KeyError>, tokio::task::JoinError>,
) {
    let (outcome, status, reason) = match result {
        Ok(Ok(())) => (Outcome::Ok, "OK", String::new()),
        Ok(Err(e)) => (Outcome::Failed, "INTERNAL", e.reason().to_string()),
        Err(_) => (Outcome::Failed, "INTERNAL", "INTERNAL".to_string()),
    };
    let event = AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: SYSTEM_PRINCIPAL.into(),
        method: method.into(),
        key_id: id.to_string(),
        outcome: Some(outcome),
        status: status.into(),
        reason,
        ..Default::default()
    };
    if let Err(e) = state.audit.append(event).await {
        tracing::error!(key_id = %id, method, error = %e, "audit record of a lifecycle change not written");
    }
}
