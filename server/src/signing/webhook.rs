//! The registry's notification endpoint: `POST /registry/events` over plain HTTP/1.1
//! (hyper), on its own address (`[registry] webhook_listen`).
//!
//! The registry must send the shared secret as `Authorization: Bearer <secret>`; a
//! missing or wrong one is answered 401 and is an audit record. The body's manifest
//! pushes are written to the store's queue in one durable transaction before the answer:
//! 200 means every push of the envelope is queued. A body that is not an envelope is
//! 400; an envelope with some unreadable events is 400 too, after its readable pushes
//! are queued (a redelivery queues none of them twice: the event id is the key). Each
//! request that queues or refuses something is an audit record (method
//! [`WEBHOOK_METHOD`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::domain::reason::Reason;
use crate::keys::KeyManager;
use crate::store::EventRow;

use super::events;

/// Path the registry posts to.
pub(crate) const PATH: &str = "/registry/events";
/// Method of the webhook's audit records.
pub(crate) const WEBHOOK_METHOD: &str = "hsmd/RegistryEvents";
/// Largest body read (an envelope of a few events is a few KiB).
const MAX_BODY: usize = 4 << 20;

/// What the endpoint needs.
#[derive(Clone)]
pub(crate) struct Webhook {
    pub(crate) keys: Arc<KeyManager>,
    pub(crate) audit: AuditLog,
    pub(crate) secret: Arc<SecretString>,
    /// Woken after pushes are queued.
    pub(crate) wake: Arc<Notify>,
}

/// Serves `listener` until the task is dropped; one task per connection.
pub(crate) async fn serve(listener: TcpListener, hook: Webhook) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let hook = hook.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hook = hook.clone();
                async move { Ok::<_, Infallible>(hook.answer(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Webhook {
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if req.uri().path() != PATH {
            return reply(StatusCode::NOT_FOUND, format!("not found: POST {PATH}\n"));
        }
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
        }
        let mut event = AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: "registry".into(),
            peer: peer.to_string(),
            method: WEBHOOK_METHOD.into(),
            ..Default::default()
        };
        if let Some(reason) = self.refused(req.headers().get(AUTHORIZATION)) {
            event.outcome = Some(Outcome::Denied);
            event.status = "UNAUTHENTICATED".into();
            event.reason = reason.to_string();
            return self
                .answered(
                    event,
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong Authorization: Bearer secret\n".into(),
                )
                .await;
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                event.outcome = Some(Outcome::Invalid);
                event.status = "INVALID_ARGUMENT".into();
                event.reason = Reason::InvalidArgument.to_string();
                return self
                    .answered(
                        event,
                        StatusCode::BAD_REQUEST,
                        format!("body not read: {e}\n"),
                    )
                    .await;
            }
        };
        event.input_sha256 = crate::audit::record::input_hash(&body);
        let envelope = match events::parse(&body) {
            Ok(e) => e,
            Err(e) => {
                event.outcome = Some(Outcome::Invalid);
                event.status = "INVALID_ARGUMENT".into();
                event.reason = Reason::InvalidArgument.to_string();
                event.note = e.to_string();
                return self
                    .answered(event, StatusCode::BAD_REQUEST, format!("{e}\n"))
                    .await;
            }
        };
        let received = self.keys.clock().now_ms();
        let rows: Vec<EventRow> = envelope
            .pushes
            .iter()
            .map(|p| EventRow {
                seq: 0,
                event_id: p.id.clone(),
                repository: p.full_repository(),
                digest: p.digest.to_string(),
                tag: p.tag.clone(),
                received,
                attempts: 0,
                due: received,
            })
            .collect();
        let keys = self.keys.clone();
        let queued =
            tokio::task::spawn_blocking(move || keys.store().enqueue_registry_events(&rows)).await;
        let new = match queued {
            Ok(Ok(n)) => n,
            other => {
                tracing::error!(error = ?other.err(), "registry events not queued");
                event.outcome = Some(Outcome::Failed);
                event.status = "UNAVAILABLE".into();
                event.reason = Reason::Internal.to_string();
                return self
                    .answered(
                        event,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "events not stored; retry\n".into(),
                    )
                    .await;
            }
        };
        if new > 0 {
            self.wake.notify_one();
        }
        let summary = format!(
            "pushes={} queued={new} ignored={} malformed={}",
            envelope.pushes.len(),
            envelope.ignored,
            envelope.malformed.len()
        );
        event.note = summary.clone();
        if envelope.malformed.is_empty() {
            event.outcome = Some(Outcome::Ok);
            event.status = "OK".into();
            if envelope.pushes.is_empty() {
                // Pulls, blob pushes, signatures: nothing to keep a record of.
                return reply(StatusCode::OK, format!("{summary}\n"));
            }
            return self
                .answered(event, StatusCode::OK, format!("{summary}\n"))
                .await;
        }
        let detail: Vec<String> = envelope
            .malformed
            .iter()
            .map(|(i, why)| format!("event {i}: {why}"))
            .collect();
        event.outcome = Some(Outcome::Invalid);
        event.status = "INVALID_ARGUMENT".into();
        event.reason = Reason::InvalidArgument.to_string();
        self.answered(
            event,
            StatusCode::BAD_REQUEST,
            format!("{summary}\n{}\n", detail.join("\n")),
        )
        .await
    }

    /// Why a request's credentials are refused, if they are.
    fn refused(&self, header: Option<&hyper::header::HeaderValue>) -> Option<Reason> {
        let Some(given) = header.and_then(|h| h.to_str().ok()) else {
            return Some(Reason::NoClientIdentity);
        };
        let Some(token) = given.strip_prefix("Bearer ") else {
            return Some(Reason::NoClientIdentity);
        };
        let expected = self.secret.expose_secret().as_bytes();
        if bool::from(token.trim().as_bytes().ct_eq(expected)) {
            None
        } else {
            Some(Reason::AccessDenied)
        }
    }

    /// Writes the request's audit record, then answers (503 if it cannot be written).
    async fn answered(
        &self,
        event: AuditEvent,
        status: StatusCode,
        text: String,
    ) -> Response<Full<Bytes>> {
        if let Err(e) = self.audit.append(event).await {
            tracing::error!(error = %e, "audit record of a webhook request not written");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit log unavailable; retry\n".into(),
            );
        }
        reply(status, text)
    }
}

/// Binds the webhook's address.
pub(crate) async fn bind(at: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(at).await
}
