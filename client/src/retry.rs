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

/// Runs `f` under `policy`, calling `notify` before each retry.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    call: &'static str,
    notify: &(dyn Fn(&RetryNotice) + Send + Sync),
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
        if !retryable_status(&status) || retry + 1 >= policy.max_attempts.max(1) {
            return Err(status);
        }
        retry += 1;
        let delay = policy.delay(retry, server_hint(&status), &mut rand::thread_rng());
        if start.elapsed() + delay > deadline {
            return Err(status);
        }
        notify(&RetryNotice {
            call,
            retry,
            code: status.code(),
            reason: reason_of(&status),
            delay,
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
}
