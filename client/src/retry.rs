//! Retries: RESOURCE_EXHAUSTED (rate limit) and UNAVAILABLE (token, audit log or
//! connection briefly gone) are retried with exponential backoff and full jitter,
//! bounded in attempts and in total time; every other status is returned at once.
//! [`is_retryable`] is the one rule, shared with `ClientError::is_retryable`.
//!
//! The delay before retry `n` is drawn uniformly from `0..=min(max_delay, initial *
//! multiplier^(n-1))` ("full jitter": many throttled clients do not come back in step).
//! When the server says how long to wait (google.rpc.RetryInfo or the `retry-after-ms`
//! header), the client waits at least that long. A retry that would end after the total
//! deadline is not made.
//!
//! With several endpoints (replicas of one cluster), [`route`] says where a retry goes:
//! a rate-limited call stays on its endpoint; a call that could not connect, or got
//! UNAVAILABLE, moves on to the next endpoint (round robin), with the same backoff. A
//! call that is not idempotent ([`Idempotency`]) is retried only when it surely did
//! nothing: rate limited, or failed before it reached any server
//! ([`failed_before_sending`]).

use std::error::Error;
use std::future::Future;
use std::time::{Duration, Instant};

use hsmd_proto::Reason;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic_types::StatusExt;

/// How a [`crate::Client`] retries. In a profile: a `[retry]` table with these fields
/// (all optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Ceiling of the first backoff, in milliseconds.
    pub initial_delay_ms: u64,
    /// Growth of the ceiling per retry.
    pub multiplier: f64,
    /// Largest ceiling, in milliseconds.
    pub max_delay_ms: u64,
    /// Total time for all tries of one call, in milliseconds.
    pub deadline_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_delay_ms: 50,
            multiplier: 2.0,
            max_delay_ms: 2_000,
            deadline_ms: 20_000,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The backoff ceiling before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(n.saturating_sub(1).min(64) as i32);
        let ms = (self.initial_delay_ms as f64 * exp).min(self.max_delay_ms as f64);
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// The delay before retry `n`: full jitter below the ceiling, at least the server's
    /// hint.
    pub fn delay(&self, n: u32, hint: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(n);
        let jitter = Duration::from_secs_f64(rng.gen_range(0.0..=ceiling.as_secs_f64()));
        hint.map_or(jitter, |h| h.max(jitter))
    }
}

/// One retry about to happen, for observers (`hsmctl -v`).
#[derive(Debug, Clone)]
pub struct RetryNotice {
    /// The call, e.g. `Sign`.
    pub call: &'static str,
    /// 1 for the first retry.
    pub retry: u32,
    /// What the failed try got.
    pub code: Code,
    /// Its stable reason, if any.
    pub reason: String,
    /// How long the client waits before the retry.
    pub delay: Duration,
    /// The endpoint the retry goes to when it is another than the failed try's (the
    /// client failed over); `None` when the retry stays where it was.
    pub moved_to: Option<String>,
}

/// Whether sending a call again can do its work twice.
///
/// Idempotent: reads (DescribeKey, ListKeys, GetPublicKey, GetTokenInfo, QueryAudit...);
/// Sign, Verify, Encrypt, Decrypt, GenerateRandom, GenerateDataKey (a repeat makes a
/// fresh answer, the lost one was never seen); state changes whose repeat lands in the
/// same state or is refused (EnableKey, DisableKey, UpdateAlias, Schedule/
/// CancelKeyDeletion; CreateAlias: ALREADY_EXISTS, ImportKeyMaterial:
/// INVALID_KEY_STATE), exactly as when they are retried on one endpoint, since the
/// replicas share one store; and CreateKey with an idempotency token, which hsmd keeps in
/// that store, so a repeat on any replica returns the first key. Not idempotent: CreateKey
/// without a token and RotateKey (each repeat would make another key or key version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to send again, on any endpoint, after any retryable failure.
    Idempotent,
    /// Sent again only when the failed try surely did nothing: refused with
    /// RESOURCE_EXHAUSTED (same endpoint), or failed before reaching a server (next
    /// endpoint). A failure that leaves the outcome unknown (connection lost after
    /// sending, UNAVAILABLE from a server or proxy) is returned at once.
    NotIdempotent,
}

impl Idempotency {
    /// What a call is by its name, for callers that only name it
    /// ([`crate::Client::with_retries`]): `CreateKey` (whose token the retry loop cannot
    /// see; [`crate::Client::create_key`] always sends one and says so) and `RotateKey`
    /// are [`Idempotency::NotIdempotent`], every other call idempotent.
    pub fn of_call(call: &str) -> Idempotency {
        match call {
            "CreateKey" | "RotateKey" => Idempotency::NotIdempotent,
            _ => Idempotency::Idempotent,
        }
    }
}

/// Where the retry of a failed try goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The same endpoint: the server refused for now (RESOURCE_EXHAUSTED, e.g.
    /// RATE_LIMITED; limits are per cluster, another replica would refuse too).
    Same,
    /// The next endpoint of the client's list (round robin; the same one when there is
    /// only one).
    Next,
}

/// The fail-over rule: whether a failed try is retried, and where (`None`: not
/// retried). Retryable at all as [`retryable_status`] says; then
///
/// - RESOURCE_EXHAUSTED (RATE_LIMITED and the like): [`Route::Same`], for every call
///   (the server did nothing);
/// - failed before reaching a server ([`failed_before_sending`]): [`Route::Next`], for
///   every call;
/// - any other retryable failure (UNAVAILABLE answered by a server or proxy, such as
///   TOKEN_UNAVAILABLE or AUDIT_UNAVAILABLE; a connection lost after the request went
///   out): [`Route::Next`] for idempotent calls, not retried for the others (their
///   first try may have done the work).
pub fn route(status: &tonic::Status, idempotency: Idempotency) -> Option<Route> {
    if !retryable_status(status) {
        return None;
    }
    if status.code() == Code::ResourceExhausted
        || Reason::parse(&reason_of(status)) == Some(Reason::RateLimited)
    {
        return Some(Route::Same);
    }
    if idempotency == Idempotency::Idempotent || failed_before_sending(status) {
        Some(Route::Next)
    } else {
        None
    }
}

/// True when a failed call surely never reached a server: tonic could not set up the
/// connection (TCP connect refused or timed out, name not resolved, TLS handshake
/// failed), so no HTTP/2 request was sent. tonic reports exactly these as UNAVAILABLE
/// with its [`tonic::ConnectError`] in the status's source chain (its connector wraps
/// every TCP and TLS error in one). A status decoded from a server's answer has no
/// source, and a connection that broke after the request went out shows a hyper/h2
/// error instead (or UNKNOWN "transport error"), so both count as "may have reached
/// the server".
pub fn failed_before_sending(status: &tonic::Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut cause: Option<&(dyn Error + 'static)> = status.source();
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The one retry rule, for the retry loop and `ClientError::is_retryable`, from a
/// failed call's code, ErrorInfo reason (empty if none) and message:
///
/// - a reason hsmd sends decides: [`Reason::is_retryable`] (RATE_LIMITED,
///   TOKEN_UNAVAILABLE, AUDIT_UNAVAILABLE; hsmd sends exactly these with
///   RESOURCE_EXHAUSTED and UNAVAILABLE);
/// - otherwise (no reason, or one this version does not know: a proxy, the transport)
///   the code does: UNAVAILABLE and RESOURCE_EXHAUSTED;
/// - and a call whose connection broke before any answer came (tonic reports UNKNOWN
///   "transport error" without details) is UNAVAILABLE in all but name.
pub fn is_retryable(code: Code, reason: &str, message: &str) -> bool {
    match Reason::parse(reason) {
        Some(r) => r.is_retryable(),
        None => {
            matches!(code, Code::Unavailable | Code::ResourceExhausted)
                || (code == Code::Unknown && reason.is_empty() && message == "transport error")
        }
    }
}

/// [`is_retryable`] for a status. (It reads only what a `ClientError` keeps too, so the
/// two cannot disagree.)
pub fn retryable_status(s: &tonic::Status) -> bool {
    is_retryable(s.code(), &reason_of(s), s.message())
}

/// The ErrorInfo reason of a status, empty if it has none.
fn reason_of(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The server's retry delay: RetryInfo in the details, else `retry-after-ms`.
pub fn server_hint(status: &tonic::Status) -> Option<Duration> {
    if let Some(d) = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
    {
        return Some(d);
    }
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Runs `f` under `policy` against one endpoint, calling `notify` before each retry.
/// Whether a failure is retried is [`route`]'s rule, with the call's
/// [`Idempotency::of_call`].
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    call: &'static str,
    notify: &(dyn Fn(&RetryNotice) + Send + Sync),
    f: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let stay = |_: Route| None;
    run_routed(policy, call, Idempotency::of_call(call), notify, &stay, f).await
}

/// [`run`] across several endpoints: before each retry (after the attempt and deadline
/// checks, before `notify`), `go(route)` points the client at the endpoint [`route`]
/// chose, so that the next `f()` uses it, and returns that endpoint when it is another
/// than the failed try's (for [`RetryNotice::moved_to`]).
pub async fn run_routed<T, F, Fut>(
    policy: &RetryPolicy,
    call: &'static str,
    idempotency: Idempotency,
    notify: &(dyn Fn(&RetryNotice) + Send + Sync),
    go: &(dyn Fn(Route) -> Option<String> + Send + Sync),
    mut f: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    let deadline = Duration::from_millis(policy.deadline_ms);
    let mut retry = 0u32;
    loop {
        let status = match f().await {
            Ok(v) => return Ok(v),
            Err(s) => s,
        };
        let Some(to) = route(&status, idempotency) else {
            return Err(status);
        };
        if retry + 1 >= policy.max_attempts.max(1) {
            return Err(status);
        }
        retry += 1;
        let delay = policy.delay(retry, server_hint(&status), &mut rand::thread_rng());
        if start.elapsed() + delay > deadline {
            return Err(status);
        }
        let moved_to = go(to);
        notify(&RetryNotice {
            call,
            retry,
            code: status.code(),
            reason: reason_of(&status),
            delay,
            moved_to,
        });
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_ceiling_grows_and_caps() {
        let p = RetryPolicy {
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 1000,
            ..Default::default()
        };
        let ms: Vec<u128> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        let mut rng = rand::thread_rng();
        for n in 1..=6 {
            for _ in 0..200 {
                assert!(p.delay(n, None, &mut rng) <= p.ceiling(n));
            }
        }
        // The server's hint is a floor.
        let hint = Duration::from_millis(1500);
        assert!(p.delay(1, Some(hint), &mut rng) >= hint);
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy::default();
        let mut rng = rand::thread_rng();
        let d: Vec<Duration> = (0..50).map(|_| p.delay(3, None, &mut rng)).collect();
        assert!(d.iter().any(|x| *x < p.ceiling(3) / 2));
        assert!(d.iter().any(|x| *x > p.ceiling(3) / 2));
    }

    #[test]
    fn hint_comes_from_retry_info_or_header() {
        let mut details = tonic_types::ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_millis(40)));
        let s = tonic::Status::with_error_details(Code::ResourceExhausted, "x", details);
        assert_eq!(server_hint(&s), Some(Duration::from_millis(40)));
        let mut s = tonic::Status::new(Code::ResourceExhausted, "x");
        s.metadata_mut()
            .insert("retry-after-ms", "70".parse().unwrap());
        assert_eq!(server_hint(&s), Some(Duration::from_millis(70)));
        assert_eq!(server_hint(&tonic::Status::unavailable("x")), None);
    }

    #[tokio::test]
    async fn retries_only_retryable_codes_within_bounds() {
        let p = RetryPolicy {
            max_attempts: 4,
            initial_delay_ms: 1,
            max_delay_ms: 2,
            ..Default::default()
        };
        let seen = AtomicU32::new(0);
        let notes = AtomicU32::new(0);
        let notify = |_: &RetryNotice| {
            notes.fetch_add(1, Ordering::SeqCst);
        };
        let r: Result<(), _> = run(&p, "X", &notify, || async {
            seen.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert_eq!(
            (seen.load(Ordering::SeqCst), notes.load(Ordering::SeqCst)),
            (4, 3)
        );

        seen.store(0, Ordering::SeqCst);
        let r: Result<(), _> = run(&p, "X", &notify, || async {
            seen.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::permission_denied("no"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(seen.load(Ordering::SeqCst), 1, "never retried");

        seen.store(0, Ordering::SeqCst);
        let r = run(&p, "X", &notify, || async {
            if seen.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(tonic::Status::resource_exhausted("slow down"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert!(retryable_status(&tonic::Status::unknown("transport error")));
        assert!(!retryable_status(&tonic::Status::unknown("boom")));

        // A server delay past the total deadline ends the retries at once.
        let short = RetryPolicy {
            deadline_ms: 10,
            ..p
        };
        seen.store(0, Ordering::SeqCst);
        let r: Result<(), _> = run(&short, "X", &notify, || async {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut s = tonic::Status::resource_exhausted("x");
            s.metadata_mut()
                .insert("retry-after-ms", "5000".parse().unwrap());
            Err(s)
        })
        .await;
        assert!(r.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    fn rate_limited() -> tonic::Status {
        let details = tonic_types::ErrorDetails::with_error_info(
            "RATE_LIMITED",
            "hsmd",
            std::collections::HashMap::<String, String>::new(),
        );
        tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details)
    }

    /// What tonic makes of a refused TCP connect: UNAVAILABLE, ConnectError in the chain.
    fn refused() -> tonic::Status {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    #[test]
    fn connect_failures_are_told_from_answers() {
        let s = refused();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(failed_before_sending(&s));
        assert!(!failed_before_sending(&tonic::Status::unavailable("down")));
        assert!(!failed_before_sending(&tonic::Status::unknown(
            "transport error"
        )));
        // A lost connection after sending: an io error, but no ConnectError.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let s = tonic::Status::from_error(Box::new(reset));
        assert!(!failed_before_sending(&s), "{s:?}");
    }

    #[test]
    fn route_keeps_rate_limits_and_moves_the_rest_when_safe() {
        use Idempotency::{Idempotent, NotIdempotent};
        for idem in [Idempotent, NotIdempotent] {
            assert_eq!(route(&rate_limited(), idem), Some(Route::Same));
            let exhausted = tonic::Status::resource_exhausted("x");
            assert_eq!(route(&exhausted, idem), Some(Route::Same));
            assert_eq!(route(&refused(), idem), Some(Route::Next));
            assert_eq!(route(&tonic::Status::permission_denied("no"), idem), None);
        }
        let unavailable = tonic::Status::unavailable("replica going away");
        let broken = tonic::Status::unknown("transport error");
        assert_eq!(route(&unavailable, Idempotent), Some(Route::Next));
        assert_eq!(route(&broken, Idempotent), Some(Route::Next));
        assert_eq!(route(&unavailable, NotIdempotent), None);
        assert_eq!(route(&broken, NotIdempotent), None);
        assert_eq!(Idempotency::of_call("CreateKey"), NotIdempotent);
        assert_eq!(Idempotency::of_call("RotateKey"), NotIdempotent);
        assert_eq!(Idempotency::of_call("Sign"), Idempotent);
    }

    #[tokio::test]
    async fn run_gives_up_at_once_on_an_ambiguous_non_idempotent_failure() {
        let p = RetryPolicy {
            initial_delay_ms: 1,
            max_delay_ms: 2,
            ..Default::default()
        };
        let seen = AtomicU32::new(0);
        let notify = |_: &RetryNotice| {};
        let r: Result<(), _> = run(&p, "CreateKey", &notify, || async {
            seen.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("audit log down"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert_eq!(seen.load(Ordering::SeqCst), 1, "not sent twice");
        seen.store(0, Ordering::SeqCst);
        let r = run(&p, "CreateKey", &notify, || async {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(refused())
            } else {
                Ok(1)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 1, "a try that never left is made again");
    }
}
