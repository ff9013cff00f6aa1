//! gRPC services. Thin: decode and validate, authorize, call the key rules in the
//! blocking pool, audit, answer. `Call` carries one request's audit facts from start
//! to finish; `Ctx::finish` makes the record durable before any answer leaves.

pub mod audit;
pub mod certs;
pub mod convert;
pub mod crypt;
pub mod keys;
pub mod status;
pub mod token;

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::auth::{Authorizer, principal_from_cert};
use crate::keys::{KeyError, KeyManager};
pub use status::ApiError;

/// Shared state of the services.
#[derive(Clone)]
pub struct Ctx {
    pub keys: Arc<KeyManager>,
    pub audit: AuditLog,
    pub auth: Arc<Authorizer>,
}

/// Who is calling, from the connection: principal (verified client certificate) and peer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub principal: Option<String>,
    pub peer: String,
}

impl Identity {
    /// Reads the identity of a request's connection.
    pub fn of<T>(req: &Request<T>) -> Identity {
        let principal = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| principal_from_cert(c.as_ref())));
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        Identity { principal, peer }
    }
}

/// One call in flight: its audit facts and its caller.
pub struct Call {
    started: Instant,
    method: &'static str,
    pub event: AuditEvent,
    principal: Option<String>,
}

impl Call {
    /// Starts a call: request id, peer and principal (from the verified client
    /// certificate; TLS already refused certificates from other CAs).
    pub fn begin<T>(req: &Request<T>, method: &'static str) -> Call {
        Call::with_identity(&Identity::of(req), method)
    }

    /// Starts a call for a caller already identified (the requests of one stream).
    pub fn with_identity(who: &Identity, method: &'static str) -> Call {
        let event = AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: who.principal.clone().unwrap_or_default(),
            peer: who.peer.clone(),
            method: method.to_string(),
            ..Default::default()
        };
        Call {
            started: Instant::now(),
            method,
            event,
            principal: who.principal.clone(),
        }
    }

    /// The caller, if allowed to call at all.
    pub fn authorize(&self, auth: &Authorizer) -> Result<String, ApiError> {
        let p = self.principal.as_deref().ok_or(ApiError::Unauthenticated)?;
        if auth.allows(p) {
            Ok(p.to_string())
        } else {
            Err(ApiError::PermissionDenied {
                principal: p.to_string(),
                method: short(self.method),
            })
        }
    }

    /// Notes the key as the caller named it (alias) and as it resolved (id).
    pub fn note_key(&mut self, named: &str, resolved: Option<uuid::Uuid>) {
        if named.starts_with("alias/") {
            self.event.alias = named.to_string();
        } else if resolved.is_none() {
            self.event.key_id = crate::keys::truncate(named, 64);
        }
        if let Some(id) = resolved {
            self.event.key_id = id.to_string();
        }
    }
}

fn short(method: &'static str) -> &'static str {
    method.rsplit('/').next().unwrap_or(method)
}

impl Ctx {
    /// Runs key rules in the blocking pool (they block on SQLite and PKCS#11).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyManager) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || f(&keys))
            .await
            .map_err(|e| ApiError::Key(KeyError::Internal(format!("blocking task: {e}"))))?
            .map_err(ApiError::from)
    }

    /// Writes the call's audit record and only then answers. If the record cannot be
    /// made durable, the answer is UNAVAILABLE whatever the call did.
    pub async fn finish<T>(
        &self,
        call: Call,
        result: Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let (request_id, result) = self.record(call, result).await;
        match result {
            Ok(v) => {
                let mut resp = Response::new(v);
                if let Ok(v) = request_id.parse() {
                    resp.metadata_mut().insert("x-request-id", v);
                }
                Ok(resp)
            }
            Err(e) => Err(with_request_id(e.to_status(), &request_id)),
        }
    }

    /// Makes the call's audit record durable; returns its request id and the result to
    /// answer with (AUDIT_UNAVAILABLE if the record could not be written).
    pub async fn record<T>(
        &self,
        mut call: Call,
        result: Result<T, ApiError>,
    ) -> (String, Result<T, ApiError>) {
        call.event.duration_us = call.started.elapsed().as_micros() as u64;
        match &result {
            Ok(_) => {
                call.event.outcome = Some(Outcome::Ok);
                call.event.status = "OK".into();
            }
            Err(e) => {
                call.event.outcome = Some(e.outcome());
                call.event.status = status::code_name(e.code()).into();
                call.event.reason = e.reason().into();
            }
        }
        let request_id = call.event.request_id.clone();
        if let Err(e) = self.audit.append(call.event).await {
            tracing::error!(error = %e, method = call.method, "audit record not written; failing the call");
            return (request_id, Err(ApiError::AuditUnavailable));
        }
        (request_id, result)
    }
}

fn with_request_id(mut s: Status, id: &str) -> Status {
    if let Ok(v) = id.parse() {
        s.metadata_mut().insert("x-request-id", v);
    }
    s
}
