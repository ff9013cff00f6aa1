//! gRPC services. Thin: decode and validate, authorize, call the key rules (in the
//! blocking pool, or inline when `pace` has measured them quick), audit, answer.
//! `Call` carries one request's audit facts from start to finish; `ApiState::finish`
//! makes the record durable before any answer leaves.
//!
//! Every call goes through one bracket, written once here:
//!
//! ```text
//! self.state
//!     .call(req, method!("Verify"))                 // begin: request id, caller
//!     .note_input(|r| &r.message)                   // its hash, refused or not (optional)
//!     .answer(Action::Verify, async |call, grant, r| { /* work */ })
//!     .await                                        // authorize, work, audit, answer
//! ```
//!
//! Authorization is two steps: `answer` checks that the caller may do the action on
//! some key and takes a rate-limit token, and hands the work a [`Grant`]; once the key
//! is resolved, `grant.check_key(&key)?` checks that key ([`ApiState::with_key`] does
//! both the resolving and the check, and hides unknown keys from callers who may not
//! know them).

mod aliases;
pub(crate) mod audit;
pub(crate) mod certs;
pub(crate) mod complete;
pub(crate) mod convert;
pub(crate) mod crypt;
pub(crate) mod images;
pub(crate) mod import;
pub(crate) mod keys;
pub(crate) mod kubernetes;
pub(crate) mod pace;
mod rotation;
mod signing;
pub(crate) mod status;
pub(crate) mod token;

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::audit::record::input_hash;
use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::auth::{Action, Authorizer, KeyFacts, Policy, principal_of};
use crate::domain::record::KeyRecord;
use crate::keys::{KeyError, KeyManager, KeyRef};
use crate::metrics::Metrics;
pub(crate) use status::ApiError;

/// Shared state of the services.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) keys: Arc<KeyManager>,
    pub(crate) audit: AuditLog,
    pub(crate) auth: Arc<Authorizer>,
    /// Calls by method and outcome, their latency, rate-limit refusals.
    pub(crate) metrics: Arc<Metrics>,
    /// Signs and verifies container images in the configured registry.
    pub(crate) signer: Arc<crate::signing::signer::Signer>,
    /// How long each kind of key work takes: whether it runs inline or in the pool.
    pub(crate) pace: Arc<pace::Pace>,
    /// The calls running (counted by `complete::RunToCompletion`).
    pub(crate) running: complete::Running,
}

/// Who is calling, from the connection: principal (verified client certificate) and peer.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) principal: Option<String>,
    pub(crate) peer: String,
    /// The connection's remote address (None for the KMS plugin's Unix socket).
    pub(crate) addr: Option<std::net::SocketAddr>,
}

impl Identity {
    /// Reads the identity of a request's connection.
    pub(crate) fn of<T>(req: &Request<T>) -> Identity {
        let principal = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| principal_of(c.as_ref())));
        let addr = req.remote_addr();
        let peer = addr.map(|a| a.to_string()).unwrap_or_default();
        Identity {
            principal,
            peer,
            addr,
        }
    }
}

/// One call in flight: its audit facts and its caller.
pub(crate) struct Call {
    started: Instant,
    method: &'static str,
    pub(crate) event: AuditEvent,
    principal: Option<String>,
    addr: Option<std::net::SocketAddr>,
    /// Tells the audit writer a record is coming (group commit); dropped as it is queued.
    expected: Option<crate::audit::Expected>,
}

impl Call {
    /// Starts a call: request id, peer and principal (from the verified client
    /// certificate; TLS already refused certificates from other CAs).
    fn begin<T>(req: &Request<T>, method: &'static str) -> Call {
        Call::with_identity(&Identity::of(req), method)
    }

    /// Starts a call for a caller already identified (the requests of one stream).
    pub(crate) fn with_identity(who: &Identity, method: &'static str) -> Call {
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
            addr: who.addr,
            expected: None,
        }
    }

    /// Checks that the caller may do `action` (on some key, for key actions) and takes
    /// a token from its rate limit for the action's class. Refusals are
    /// PERMISSION_DENIED (ACCESS_DENIED) and RESOURCE_EXHAUSTED (RATE_LIMITED, or
    /// CONNECTION_LIMIT on a connection past its principal's limit).
    fn authorize(&self, state: &ApiState, action: Action) -> Result<Grant, ApiError> {
        let p = self.principal.as_deref().ok_or(ApiError::Unauthenticated)?;
        let connections = state.auth.connections();
        if connections.is_over(self.addr) {
            return Err(ApiError::ConnectionLimit {
                principal: p.to_string(),
                max: connections.max(),
            });
        }
        let policy = state.auth.policy();
        if !policy.may(p, action) {
            return Err(ApiError::AccessDenied {
                principal: p.to_string(),
                action: action.name(),
                key: None,
            });
        }
        let class = action.limit_class();
        if let Err(wait) = state.auth.limits().check(p, class) {
            state.metrics.rate_limited(class.name(), p);
            return Err(ApiError::RateLimited {
                class: class.name(),
                retry_after: wait,
            });
        }
        Ok(Grant {
            principal: p.to_string(),
            action,
            policy,
        })
    }

    /// Notes the key as the caller named it (alias) and as it resolved (id).
    pub(crate) fn note_key(&mut self, named: &str, resolved: Option<uuid::Uuid>) {
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

/// What `Call::authorize` allowed: an action for a principal, under the policy in force
/// when the call began. Cheap to clone into a blocking task.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    principal: String,
    action: Action,
    policy: std::sync::Arc<Policy>,
}

impl Grant {
    /// The caller.
    pub(crate) fn principal(&self) -> &str {
        &self.principal
    }

    /// Checks the policy allows the action on this key.
    pub(crate) fn check_key(&self, key: &KeyRecord) -> Result<(), ApiError> {
        self.check_key_for(self.action, key)
    }

    /// Checks the policy allows `action`, another than the call's, on this key (binding
    /// a key to an image-signing policy needs Sign on it).
    pub(crate) fn check_key_for(&self, action: Action, key: &KeyRecord) -> Result<(), ApiError> {
        if self
            .policy
            .may_on(&self.principal, action, &KeyFacts::of(key))
        {
            Ok(())
        } else {
            Err(ApiError::AccessDenied {
                principal: self.principal.clone(),
                action: action.name(),
                key: Some(key.id.to_string()),
            })
        }
    }

    /// Checks a key about to be created (its alias and tags; it has no id yet).
    pub(crate) fn check_new_key(
        &self,
        alias: Option<&str>,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let aliases: Vec<String> = alias.map(str::to_string).into_iter().collect();
        let facts = KeyFacts {
            id: None,
            aliases: &aliases,
            tags,
        };
        if self.policy.may_on(&self.principal, self.action, &facts) {
            Ok(())
        } else {
            let what = alias.map_or("(new key with these tags)".to_string(), str::to_string);
            Err(self.denied(what))
        }
    }

    /// What a caller who named a key that does not resolve is told: the real error if
    /// it may act on every key, else the same refusal as for a key it may not use (so
    /// the answer does not tell which keys exist).
    pub(crate) fn hide_missing(&self, named: &str, err: ApiError) -> ApiError {
        let missing = matches!(
            err,
            ApiError::Key(KeyError::KeyNotFound(_) | KeyError::AliasNotFound(_))
        );
        if missing && !self.policy.may_on_any_key(&self.principal, self.action) {
            self.denied(crate::keys::truncate(named, 80))
        } else {
            err
        }
    }

    fn denied(&self, key: String) -> ApiError {
        ApiError::AccessDenied {
            principal: self.principal.clone(),
            action: self.action.name(),
            key: Some(key),
        }
    }
}

impl ApiState {
    /// Runs key rules in the blocking pool (they block on SQLite and PKCS#11).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyManager) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || f(&keys))
            .await
            .map_err(|e| ApiError::Key(KeyError::Internal(format!("blocking task: {e}"))))?
            .map_err(ApiError::from)
    }

    /// Begins a call: its audit facts (request id, caller, method) and its request.
    pub(crate) fn call<R>(&self, req: Request<R>, method: &'static str) -> Begun<'_, R> {
        let call = Call::begin(&req, method);
        Begun::new(self, call, req.into_inner())
    }

    /// Resolves a key, checks the grant allows it, and runs `f` on it in one go: inline
    /// when this kind of work has been quick ([`pace`]), else in one blocking task (one
    /// hop into the blocking pool per call). Notes the key in the audit record either
    /// way.
    pub(crate) async fn with_key<T: Send + 'static>(
        &self,
        call: &mut Call,
        grant: &Grant,
        named: &str,
        f: impl FnOnce(&KeyManager, KeyRecord) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let key_ref = match KeyRef::parse(named) {
            Ok(r) => r,
            Err(e) => {
                call.note_key(named, None);
                return Err(e.into());
            }
        };
        let g = grant.clone();
        let pace = self.pace.clone();
        let kind = pace.kind(call.method, named);
        let work = move |m: &KeyManager, inline: bool| {
            pace.measure(kind, inline, || match m.resolve(&key_ref) {
                Ok(key) => (Some(key.id), g.check_key(&key).and_then(|()| f(m, key))),
                Err(e) => (None, Err(ApiError::from(e))),
            })
        };
        // Quick work runs here, slow or unknown work in the blocking pool (`pace`).
        let (id, result) = if self.pace.inline(kind) {
            // Calls that arrived with this one do their own work up to here first, so
            // the token work of a burst runs back to back: the token's code and data
            // stay in the CPU's caches instead of being pushed out by a call's TLS,
            // HTTP/2 and audit work between two signatures. A lone call goes straight on.
            if self.running.others() {
                tokio::task::yield_now().await;
            }
            let keys = &self.keys;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(keys, true)))
                .map_err(|_| ApiError::Key(KeyError::Internal("key work panicked".into())))?
        } else {
            self.blocking(move |m| Ok(work(m, false))).await?
        };
        call.note_key(named, id);
        result.map_err(|e| grant.hide_missing(named, e))
    }

    /// Writes the call's audit record and only then answers. If the record cannot be
    /// made durable, the answer is UNAVAILABLE whatever the call did.
    async fn finish<T>(
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
    /// answer with (AUDIT_UNAVAILABLE if the record could not be written). Every call
    /// ends here, so this is where its metrics are counted.
    async fn record<T>(
        &self,
        call: Call,
        result: Result<T, ApiError>,
    ) -> (String, Result<T, ApiError>) {
        let (started, method) = (call.started, call.method);
        let principal = call.principal.clone();
        let (request_id, result) = self.write_record(call, result).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        self.metrics.call(
            method,
            outcome.name(),
            principal.as_deref(),
            started.elapsed(),
        );
        (request_id, result)
    }

    /// The audit half of [`record`](ApiState::record).
    async fn write_record<T>(
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
        drop(call.expected.take());
        if matches!(result, Err(ApiError::RateLimited { .. })) {
            // A throttled call did nothing: its record shares the next group's fsync
            // instead of costing one of its own (see `audit::writer`).
            if let Err(e) = self.audit.append_lazy(call.event) {
                tracing::error!(error = %e, "audit record of a throttled call not queued");
                return (request_id, Err(ApiError::AuditUnavailable));
            }
            return (request_id, result);
        }
        if let Err(e) = self.audit.append(call.event).await {
            tracing::error!(error = %e, method = call.method, "audit record not written; failing the call");
            return (request_id, Err(ApiError::AuditUnavailable));
        }
        (request_id, result)
    }
}

/// A call begun and not yet authorized: the one bracket of every handler. `note_input`
/// and `decode` (optional) run before authorization; `answer` authorizes, runs the
/// work and answers only once the audit record is durable.
pub(crate) struct Begun<'s, R> {
    state: &'s ApiState,
    call: Call,
    req: R,
}

impl<'s, R> Begun<'s, R> {
    /// A call begun by hand (each request of a stream, for a caller already known).
    pub(crate) fn new(state: &'s ApiState, mut call: Call, req: R) -> Self {
        call.expected = Some(state.audit.expect());
        Begun { state, call, req }
    }

    /// Reshapes the request before authorization, for a secret that must sit in a
    /// wiping buffer from the start, refused call or not.
    pub(crate) fn decode<D>(self, f: impl FnOnce(R) -> D) -> Begun<'s, D> {
        let Begun { state, call, req } = self;
        Begun {
            state,
            call,
            req: f(req),
        }
    }

    /// Notes the SHA-256 of the request's input (never the input) in the audit record
    /// before authorization, so a refused call's record has it too.
    pub(crate) fn note_input(mut self, input: impl FnOnce(&R) -> &[u8]) -> Self {
        self.call.event.input_sha256 = input_hash(input(&self.req));
        self
    }

    /// Authorizes `action`, runs `work` if allowed, makes the audit record durable and
    /// only then answers (UNAVAILABLE if the record cannot be written).
    pub(crate) async fn answer<T>(
        self,
        action: Action,
        work: impl AsyncFnOnce(&mut Call, Grant, R) -> Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let state = self.state;
        let (call, result) = self.run(action, work).await;
        state.finish(call, result).await
    }

    /// As `answer`, for an answer that is not a response of its own (an item of a
    /// stream): the request id and the result to answer with, once the record is durable.
    pub(crate) async fn recorded<T>(
        self,
        action: Action,
        work: impl AsyncFnOnce(&mut Call, Grant, R) -> Result<T, ApiError>,
    ) -> (String, Result<T, ApiError>) {
        let state = self.state;
        let (call, result) = self.run(action, work).await;
        state.record(call, result).await
    }

    async fn run<T>(
        self,
        action: Action,
        work: impl AsyncFnOnce(&mut Call, Grant, R) -> Result<T, ApiError>,
    ) -> (Call, Result<T, ApiError>) {
        let Begun {
            state,
            mut call,
            req,
        } = self;
        let result = match call.authorize(state, action) {
            Ok(grant) => work(&mut call, grant, req).await,
            Err(e) => Err(e),
        };
        (call, result)
    }
}

fn with_request_id(mut s: Status, id: &str) -> Status {
    if let Ok(v) = id.parse() {
        s.metadata_mut().insert("x-request-id", v);
    }
    s
}
