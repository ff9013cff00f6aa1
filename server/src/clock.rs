//! Time as a dependency. Code that asks "what time is it" takes a [`Clock`]: the daemon
//! passes [`SystemClock`]; tests pass a [`ManualClock`] and move it, instead of editing
//! dates in the metadata store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time (UTC).
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> i128;

    /// Whole seconds since the Unix epoch (the unit of every date in the store).
    fn now(&self) -> i64 {
        i64::try_from(self.now_nanos().div_euclid(1_000_000_000)).unwrap_or(i64::MAX)
    }

    /// Milliseconds since the Unix epoch (the unit of the registry event queue and the
    /// rate buckets).
    fn now_ms(&self) -> i64 {
        i64::try_from(self.now_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The current time as a date.
    fn now_utc(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(self.now_nanos())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

/// The clock shared by every part of one daemon.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> i128 {
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    }
}

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

/// The system clock moved by a test: it keeps ticking (records keep increasing time
/// stamps), shifted by what [`advance`](ManualClock::advance) and
/// [`set`](ManualClock::set) ask.
#[derive(Debug)]
pub struct ManualClock {
    /// Offset from the system clock, in nanoseconds.
    offset: AtomicI64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            offset: AtomicI64::new(0),
        }
    }
}

impl ManualClock {
    /// A clock that starts at the system time.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock::default())
    }

    /// Moves the clock forward (or back, for a negative `secs`).
    pub fn advance(&self, secs: i64) {
        self.offset
            .fetch_add(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }

    /// Sets the clock to `unix_secs`.
    pub fn set(&self, unix_secs: i64) {
        let system = SystemClock.now_nanos();
        let want = i128::from(unix_secs) * 1_000_000_000;
        let offset = i64::try_from(want - system).unwrap_or(0);
        self.offset.store(offset, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> i128 {
        SystemClock.now_nanos() + i128::from(self.offset.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert!((start - SystemClock.now()).abs() <= 1);
        clock.advance(8 * 86_400);
        assert!(clock.now() >= start + 8 * 86_400);
        clock.set(1_000_000);
        assert!((clock.now() - 1_000_000).abs() <= 1);
        assert!((clock.now_utc().unix_timestamp() - 1_000_000).abs() <= 1);
    }
}
