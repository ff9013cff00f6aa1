//! Rate limits: a token bucket per principal and per operation class, from
//! `[rate_limits]` (`sign = "500/s burst 1000"`). A call over the limit learns how long
//! to wait before one token is back. Classes without a limit are not limited.
//!
//! In a cluster the limits are the cluster's, not each replica's: the bucket lives in
//! the shared store ([`SharedBuckets`]) and each replica takes tokens from it in small
//! batches (50 ms of the rate, at least one), spending them locally. The cluster never
//! grants more than the rate plus the burst; tokens one replica took and has not spent
//! yet (at most one batch each) are not available to the others meanwhile. While the
//! store cannot be reached, each replica limits on its own bucket.
//!
//! Hand-written rather than `governor`: a few lines, no new dependency, and the wait it
//! reports is exact and easy to test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::action::LimitClass;

/// Most buckets kept; past this, full (idle) buckets are dropped.
const MAX_BUCKETS: usize = 100_000;

/// A rate: `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h`, optionally followed by `burst B` (default: one
    /// second's worth, at least 1).
    pub(crate) fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!("'{text}': write e.g. \"500/s burst 1000\" (N/s, N/m or N/h, optional burst B)")
        };
        let mut words = text.split_whitespace();
        let (n, unit) = words
            .next()
            .and_then(|w| w.split_once('/'))
            .ok_or_else(bad)?;
        let n: f64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(format!("'{text}': the rate must be above 0"));
        }
        let per_second = n / secs;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => per_second.max(1.0),
            (Some("burst"), Some(b), None) => match b.parse::<f64>() {
                Ok(b) if b >= 1.0 && b.is_finite() => b,
                _ => return Err(format!("'{text}': burst must be a number of at least 1")),
            },
            _ => return Err(bad()),
        };
        Ok(Rate { per_second, burst })
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The cluster's buckets, in the shared store.
pub(crate) trait SharedBuckets: Send + Sync + std::fmt::Debug {
    /// Takes up to `want` (at least 1) tokens from bucket `name` of `rate`: how many
    /// were granted, and when none was, how long until one is back.
    fn take(&self, name: &str, rate: Rate, want: u32) -> Result<(u32, Duration), String>;
}

/// Token buckets per (principal, class).
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    limits: RwLock<HashMap<LimitClass, Rate>>,
    buckets: Mutex<HashMap<(String, LimitClass), Bucket>>,
    /// The cluster's buckets; tokens taken from them and not yet spent.
    shared: Option<Arc<dyn SharedBuckets>>,
    taken: Mutex<HashMap<(String, LimitClass), u32>>,
}

impl RateLimiter {
    pub(crate) fn new(limits: HashMap<LimitClass, Rate>) -> Self {
        RateLimiter {
            limits: RwLock::new(limits),
            ..Default::default()
        }
    }

    /// Limits per cluster: tokens come from `shared`.
    pub(crate) fn shared(mut self, shared: Arc<dyn SharedBuckets>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Replaces the limits (config reload); saved tokens are kept, capped to the new
    /// bursts.
    pub(crate) fn set_limits(&self, limits: HashMap<LimitClass, Rate>) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Takes one token, or says how long until one is back. With shared buckets this
    /// may ask the store (a blocking call: run it where blocking is allowed).
    pub(crate) fn check(&self, principal: &str, class: LimitClass) -> Result<(), Duration> {
        if let Some(shared) = &self.shared
            && let Some(rate) = self.rate(class)
        {
            match self.check_shared(shared.as_ref(), principal, class, rate) {
                Ok(r) => return r,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster rate limit unavailable; limiting on this replica alone");
                }
            }
        }
        self.check_at(principal, class, Instant::now())
    }

    fn rate(&self, class: LimitClass) -> Option<Rate> {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&class)
            .copied()
    }

    /// One token from this replica's share of the cluster's bucket, taking a batch
    /// from the store when the share is spent.
    fn check_shared(
        &self,
        shared: &dyn SharedBuckets,
        principal: &str,
        class: LimitClass,
        rate: Rate,
    ) -> Result<Result<(), Duration>, String> {
        let key = (principal.to_string(), class);
        {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = taken.get_mut(&key)
                && *n > 0
            {
                *n -= 1;
                return Ok(Ok(()));
            }
        }
        // 50 ms of the rate, at least one token, at most the burst.
        let batch = (rate.per_second * 0.05).min(rate.burst).floor().max(1.0) as u32;
        let (granted, wait) = shared.take(&format!("{}/{principal}", class.name()), rate, batch)?;
        if granted == 0 {
            return Ok(Err(wait.max(Duration::from_millis(1))));
        }
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if taken.len() >= MAX_BUCKETS {
            taken.retain(|_, n| *n > 0);
        }
        *taken.entry(key).or_insert(0) += granted - 1;
        Ok(Ok(()))
    }

    fn check_at(&self, principal: &str, class: LimitClass, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&class)
            .copied()
        else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second < rate.burst
            });
        }
        let b = buckets
            .entry((principal.to_string(), class))
            .or_insert(Bucket {
                tokens: rate.burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / rate.per_second;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("500/s burst 1000"),
            Ok(Rate {
                per_second: 500.0,
                burst: 1000.0
            })
        );
        assert_eq!(
            Rate::parse("60/m"),
            Ok(Rate {
                per_second: 1.0,
                burst: 1.0
            })
        );
        for bad in [
            "",
            "500",
            "5/d",
            "0/s",
            "-1/s",
            "5/s burst",
            "5/s burst 0",
            "5/s x 3",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_refuses_past_the_burst_and_says_when() {
        let l = RateLimiter::new(
            [(
                LimitClass::Sign,
                Rate {
                    per_second: 10.0,
                    burst: 3.0,
                },
            )]
            .into(),
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("p", LimitClass::Sign, t0).is_ok());
        }
        let wait = l.check_at("p", LimitClass::Sign, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Other principals and classes have their own buckets / no limit.
        assert!(l.check_at("q", LimitClass::Sign, t0).is_ok());
        assert!(l.check_at("p", LimitClass::Verify, t0).is_ok());
        // One token back after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("p", LimitClass::Sign, t1).is_ok());
        assert!(l.check_at("p", LimitClass::Sign, t1).is_err());
    }
}
