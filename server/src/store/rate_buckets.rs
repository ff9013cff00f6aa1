//! The cluster's rate-limit buckets (issue 17): one row per (class, principal), the
//! tokens in millionths and when they were last counted. A replica takes a batch of
//! tokens in one transaction that locks the row, so two replicas never both spend the
//! same tokens: across the cluster, no more than the rate plus the burst is granted.
//! On PostgreSQL the time is the database's, not the replica's: a replica whose clock
//! runs ahead would otherwise stop the bucket refilling for all the others.

use super::sql::{Dialect, args};
use super::{Store, StoreError};

/// Created with the rest of the schema at `Store::open` (PostgreSQL: migration 2).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rate_buckets (
    bucket TEXT PRIMARY KEY,
    micro_tokens INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// A millionth of a token.
const MICRO: f64 = 1e6;

/// PostgreSQL's clock in Unix milliseconds.
const PG_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

impl Store {
    /// Takes up to `want` tokens (at least 1) from `bucket`, which fills at
    /// `per_second` up to `burst` (starting full), at `now_ms` (SQLite; PostgreSQL
    /// reads its own clock): how many were granted and, when none was, how many ms
    /// until one is back.
    pub(crate) fn take_tokens(
        &self,
        bucket: &str,
        per_second: f64,
        burst: f64,
        want: u32,
        now_ms: i64,
    ) -> Result<(u32, i64), StoreError> {
        let full = (burst * MICRO) as i64;
        self.tx(|c| {
            let row = match c.dialect() {
                Dialect::Sqlite => {
                    c.execute(
                        "INSERT INTO rate_buckets (bucket, micro_tokens, at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (bucket) DO NOTHING",
                        args![bucket, full, now_ms],
                    )?;
                    c.query_opt(
                        "SELECT micro_tokens, at_ms, ?2 FROM rate_buckets WHERE bucket = ?1",
                        args![bucket, now_ms],
                    )?
                }
                Dialect::Postgres => {
                    c.execute(
                        &format!(
                            "INSERT INTO rate_buckets (bucket, micro_tokens, at_ms) \
                             VALUES (?1, ?2, {PG_NOW_MS}) ON CONFLICT (bucket) DO NOTHING"
                        ),
                        args![bucket, full],
                    )?;
                    c.query_opt(
                        &format!(
                            "SELECT micro_tokens, at_ms, {PG_NOW_MS} FROM rate_buckets \
                             WHERE bucket = ?1 FOR UPDATE"
                        ),
                        args![bucket],
                    )?
                }
            }
            .ok_or_else(|| StoreError::Corrupt(format!("rate bucket {bucket} vanished")))?;
            let (micro, at, now_ms): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            // Clocks of replicas differ a little: time never runs backwards here.
            let elapsed = (now_ms - at).max(0) as f64;
            let avail = (micro as f64 + elapsed * per_second * 1000.0).min(full as f64);
            let granted = (avail / MICRO).floor().clamp(0.0, f64::from(want)) as u32;
            let left = avail - f64::from(granted) * MICRO;
            c.execute(
                "UPDATE rate_buckets SET micro_tokens = ?1, at_ms = ?2 WHERE bucket = ?3",
                args![left as i64, now_ms.max(at), bucket],
            )?;
            let wait = if granted == 0 {
                ((MICRO - left) / (per_second * 1000.0)).ceil() as i64
            } else {
                0
            };
            Ok((granted, wait))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::clock::{Clock, SystemClock};

    fn now_ms() -> i64 {
        SystemClock.now_ms()
    }

    #[test]
    fn buckets_grant_the_burst_then_the_rate_and_say_when() {
        for db in crate::store::tests::databases() {
            let (a, b) = (db.open("a"), db.open("b"));
            // 10/s, burst 5: two replicas together get 5 at once, then none.
            assert_eq!(
                a.take_tokens("sign/p", 10.0, 5.0, 3, now_ms()).unwrap(),
                (3, 0)
            );
            assert_eq!(
                b.take_tokens("sign/p", 10.0, 5.0, 3, now_ms()).unwrap(),
                (2, 0)
            );
            let (none, wait) = a.take_tokens("sign/p", 10.0, 5.0, 1, now_ms()).unwrap();
            assert_eq!(none, 0, "{}", db.engine);
            assert!((1..=100).contains(&wait), "{}: wait {wait} ms", db.engine);
            // 260 ms later: 2.6 tokens back.
            std::thread::sleep(Duration::from_millis(260));
            assert_eq!(
                b.take_tokens("sign/p", 10.0, 5.0, 2, now_ms()).unwrap(),
                (2, 0)
            );
            // Other buckets are their own.
            assert_eq!(
                a.take_tokens("sign/q", 10.0, 5.0, 5, now_ms()).unwrap(),
                (5, 0)
            );
            if db.engine == "sqlite" {
                // A clock behind does not refill, nor break the bucket.
                let behind = now_ms() - 10_000;
                assert_eq!(a.take_tokens("sign/q", 10.0, 5.0, 1, behind).unwrap().0, 0);
            } else {
                // PostgreSQL counts on its own clock: a replica's clock far ahead
                // neither refills the bucket nor stops it refilling for the others.
                let ahead = now_ms() + 3_600_000;
                assert_eq!(a.take_tokens("sign/q", 10.0, 5.0, 1, ahead).unwrap().0, 0);
                std::thread::sleep(Duration::from_millis(120));
                assert_eq!(
                    b.take_tokens("sign/q", 10.0, 5.0, 1, now_ms()).unwrap().0,
                    1
                );
            }
        }
    }

    #[test]
    fn racing_replicas_never_spend_more_than_the_burst() {
        for db in crate::store::tests::databases() {
            let stores: Vec<_> = (0..4).map(|i| db.open(&format!("n{i}"))).collect();
            let granted: u32 = std::thread::scope(|s| {
                let hs: Vec<_> = stores
                    .iter()
                    .map(|st| {
                        s.spawn(move || {
                            (0..10)
                                .map(|_| {
                                    // One token per 100 s: none comes back meanwhile.
                                    st.take_tokens("sign/race", 0.01, 20.0, 1, now_ms())
                                        .unwrap()
                                        .0
                                })
                                .sum::<u32>()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(granted, 20, "{}: 40 asks, a burst of 20", db.engine);
        }
    }
}
