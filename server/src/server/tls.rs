//! The gRPC listener's TLS: TLS 1.3 only, a client certificate from the configured CA
//! required, and each handshake in a task of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::coalesce::Coalesce;
use crate::api::complete::Running;
use crate::auth::{ConnectionLimits, Slot};
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
/// Each connection takes a place of its principal in `limits`; one past the limit is
/// served (its calls are refused CONNECTION_LIMIT) for `handshake_timeout`, then closed.
pub(super) fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio::sync::watch::Receiver<TlsAcceptor>,
    handshake_timeout: Duration,
    limits: Arc<ConnectionLimits>,
    running: Running,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, std::io::Error>> {
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
            let limits = limits.clone();
            let running = running.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = Conn::admit(tls, peer, &limits, handshake_timeout, running);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A verified client connection and its place among its principal's connections. One
/// past the limit reads end-of-stream at its deadline, which closes it.
pub(super) struct Conn {
    tls: TlsStream<TcpStream>,
    slot: Slot,
    close_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Answers released together leave in one write (see `coalesce.rs`).
    coalesce: Coalesce,
}

impl Conn {
    fn admit(
        tls: TlsStream<TcpStream>,
        peer: std::net::SocketAddr,
        limits: &Arc<ConnectionLimits>,
        grace: Duration,
        running: Running,
    ) -> Conn {
        let principal = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::auth::principal_of(c.as_ref()))
            .unwrap_or_default();
        let slot = limits.admit(&principal, peer);
        let close_at = slot.over().then(|| {
            tracing::warn!(%peer, %principal, max = limits.max(), "connection past the principal's limit: its calls are refused, and it closes");
            Box::pin(tokio::time::sleep(grace))
        });
        Conn {
            tls,
            slot,
            close_at,
            coalesce: Coalesce::new(running),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(deadline) = self.close_at.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            debug_assert!(self.slot.over());
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.coalesce.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.coalesce.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    /// False on purpose. h2 copies a DATA payload of up to 1 KiB into its write buffer
    /// when the transport is not vectored, and only 256 bytes when it is; a longer payload
    /// is chained, and the frames after it wait for a flush of their own. An answer of
    /// 257 bytes to 1 KiB (a public key, an RSA-2048 signature) then left in two TLS
    /// records and two `writev`s, its trailers alone in the second. rustls copies every
    /// byte into a record anyway, so vectored writes save nothing here.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        if self.coalesce.waiting(cx) {
            return Poll::Pending;
        }
        let flushed = Pin::new(&mut self.tls).poll_flush(cx);
        if flushed.is_ready() {
            self.coalesce.flushed();
        }
        flushed
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
