//! The gRPC listener's TLS: TLS 1.3 only, a client certificate from the configured CA
//! required, and each handshake in a task of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Server TLS: TLS 1.3 only, a client certificate from the configured CA required, and
/// not revoked by the configured CRLs (when `tls.crl` names any: then a certificate whose
/// revocation status they cannot tell is refused too).
pub(super) fn tls_config(tls: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
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
    let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    for path in &tls.crl {
        let found = CertificateRevocationListDer::pem_file_iter(path)
            .with_context(|| format!("tls.crl {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("tls.crl {}", path.display()))?;
        anyhow::ensure!(
            !found.is_empty(),
            "tls.crl {}: no CRL in it",
            path.display()
        );
        crls.extend(found);
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .with_crls(crls)
    .only_check_end_entity_revocation()
    .build()
    .context("client CA and CRLs")?;
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
/// The acceptor in force comes from `acceptor` at each connection, so a SIGHUP that
/// rebuilds it (new CRLs, certificate or CA) applies to the next handshake.
pub(super) fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio::sync::watch::Receiver<TlsAcceptor>,
    handshake_timeout: Duration,
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
            let acceptor = acceptor.borrow().clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
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
