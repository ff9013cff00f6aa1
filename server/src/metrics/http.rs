//! The metrics listener: plain HTTP/1.1 (hyper, already in the build through tonic) on
//! its own address, apart from the gRPC port and its client certificates. `GET /metrics`
//! answers the registry (OpenMetrics when the scraper asks for it, as Prometheus does,
//! else the Prometheus text format 0.0.4); `GET /healthz` mirrors gRPC health: 200
//! `SERVING` or 503 `NOT_SERVING`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Metrics;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Runs before each scrape (blocking: it reads the metadata store), to set the gauges
/// that are read rather than kept.
pub(crate) type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What the listener serves.
#[derive(Clone)]
pub(crate) struct Exporter {
    pub(crate) metrics: Arc<Metrics>,
    /// True while the gRPC health service says SERVING.
    pub(crate) serving: watch::Receiver<bool>,
    pub(crate) refresh: Refresh,
}

/// Serves `listener` until the task is dropped; one task per connection.
pub(crate) async fn serve(listener: TcpListener, exporter: Exporter) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let exporter = exporter.clone();
                async move { Ok::<_, Infallible>(exporter.answer(req).await) }
            });
            // A client that never finishes its request head does not hold a task forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

impl Exporter {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT_FORMAT,
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                let open = req
                    .headers()
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let (metrics, refresh) = (self.metrics.clone(), self.refresh.clone());
                let body = tokio::task::spawn_blocking(move || {
                    refresh(&metrics);
                    if open {
                        metrics.openmetrics()
                    } else {
                        metrics.text()
                    }
                })
                .await;
                match body {
                    Ok(b) if open => reply(StatusCode::OK, OPENMETRICS_FORMAT, b),
                    Ok(b) => reply(StatusCode::OK, TEXT_FORMAT, b),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT_FORMAT,
                        format!("metrics task failed: {e}\n"),
                    ),
                }
            }
            "/healthz" => {
                if *self.serving.borrow() {
                    reply(StatusCode::OK, TEXT_FORMAT, "SERVING\n".into())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT_FORMAT,
                        "NOT_SERVING\n".into(),
                    )
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                TEXT_FORMAT,
                "not found: try /metrics or /healthz\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
