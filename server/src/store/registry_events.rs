//! The durable queue of registry push events waiting to be signed. The webhook writes a
//! batch in one transaction (synchronous FULL) before it answers 200, so an event the
//! registry was told is received survives a crash; the signing worker deletes an event
//! once it is signed (or needs no signature), or puts it back with a later due time when
//! the registry is unavailable. A worker claims events for a lease (they are not due
//! again until it ends), so two workers on one store never handle one event at once. The registry's event id is unique: a redelivered event
//! that is still queued is not queued twice.

use super::sql::{Row, args};
use super::{Store, StoreError};

/// Created with the rest of the schema at `Store::open`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registry_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    tag TEXT,
    received INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS registry_events_due ON registry_events (due);
";

/// A queued push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventRow {
    /// Queue order (0 before insertion).
    pub(crate) seq: i64,
    pub(crate) event_id: String,
    /// Full repository name, `namespace/repo`.
    pub(crate) repository: String,
    pub(crate) digest: String,
    pub(crate) tag: Option<String>,
    /// Unix milliseconds.
    pub(crate) received: i64,
    pub(crate) attempts: i64,
    /// Unix milliseconds before which the worker leaves it.
    pub(crate) due: i64,
}

fn event(r: &Row) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        seq: r.get(0)?,
        event_id: r.get(1)?,
        repository: r.get(2)?,
        digest: r.get(3)?,
        tag: r.get(4)?,
        received: r.get(5)?,
        attempts: r.get(6)?,
        due: r.get(7)?,
    })
}

impl Store {
    /// Queues a batch in one transaction; returns how many were new.
    pub(crate) fn enqueue_registry_events(&self, events: &[EventRow]) -> Result<usize, StoreError> {
        self.tx(|c| {
            let mut new = 0;
            for e in events {
                new += c.execute(
                    "INSERT INTO registry_events (event_id, repository, digest, tag, received, due) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (event_id) DO NOTHING",
                    args![&e.event_id, &e.repository, &e.digest, &e.tag, e.received],
                )?;
            }
            Ok(new)
        })
    }

    /// Takes up to `limit` events due at `now` (unix ms), oldest first, for `lease`
    /// ms: they are not due again before `now + lease`, so another worker (another
    /// replica on the same store) does not take them meanwhile, and one that dies while
    /// handling an event leaves it to be taken again once the lease is over.
    pub(crate) fn claim_registry_events(
        &self,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.tx(|c| {
            // The outer `due <= ?1` is checked again on the row itself: of two workers
            // racing for one event (PostgreSQL: the second waits for the first's row
            // lock, then re-reads the row), only the first still finds it due. SQLite's
            // transactions take the write lock at once, so there they never race.
            let mut rows = c
                .query(
                    "UPDATE registry_events SET due = ?2 WHERE due <= ?1 AND seq IN \
                     (SELECT seq FROM registry_events WHERE due <= ?1 ORDER BY seq LIMIT ?3) \
                     RETURNING seq, event_id, repository, digest, tag, received, attempts, due",
                    args![
                        now,
                        now.saturating_add(lease),
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                )?
                .iter()
                .map(event)
                .collect::<Result<Vec<_>, _>>()?;
            // RETURNING gives no order.
            rows.sort_by_key(|e| e.seq);
            Ok(rows)
        })
    }

    /// The earliest due time of any queued event.
    pub(crate) fn next_registry_event_due(&self) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_opt("SELECT MIN(due) FROM registry_events", &[])?
                .map_or(Ok(None), |r| r.get(0))
        })
    }

    /// Removes a handled event.
    pub(crate) fn finish_registry_event(&self, seq: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM registry_events WHERE seq = ?1", args![seq])?;
            Ok(())
        })
    }

    /// Puts an event back, due again at `due`, noting why it failed.
    pub(crate) fn retry_registry_event(
        &self,
        seq: i64,
        due: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE registry_events SET attempts = attempts + 1, due = ?2, last_error = ?3 \
                 WHERE seq = ?1",
                args![seq, due, error],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, t: i64) -> EventRow {
        EventRow {
            seq: 0,
            event_id: id.into(),
            repository: "team/app".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            tag: Some("v1".into()),
            received: t,
            attempts: 0,
            due: t,
        }
    }

    #[test]
    fn queue_dedups_orders_leases_and_retries() {
        for db in crate::store::tests::databases() {
            let s = db.open("a");
            queue_on(&s);
        }
    }

    fn queue_on(s: &Store) {
        assert_eq!(
            s.enqueue_registry_events(&[ev("a", 10), ev("b", 20)])
                .unwrap(),
            2
        );
        assert_eq!(
            s.enqueue_registry_events(&[ev("a", 30)]).unwrap(),
            0,
            "redelivery"
        );
        let due = s.claim_registry_events(15, 1000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].event_id.as_str(), due[0].due), ("a", 1015));
        // Leased: another worker does not get it, even when b is due.
        let other = s.claim_registry_events(25, 1000, 10).unwrap();
        assert_eq!(
            other
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(s.claim_registry_events(500, 1000, 10).unwrap().is_empty());
        s.retry_registry_event(due[0].seq, 100, "down").unwrap();
        assert_eq!(s.next_registry_event_due().unwrap(), Some(100));
        s.finish_registry_event(other[0].seq).unwrap();
        let a = s.claim_registry_events(100, 1000, 10).unwrap();
        assert_eq!((a.len(), a[0].attempts), (1, 1));
        // A worker that died holding it: taken again once the lease is over.
        assert!(s.claim_registry_events(1099, 1000, 10).unwrap().is_empty());
        assert_eq!(s.claim_registry_events(1100, 1000, 10).unwrap().len(), 1);
        s.finish_registry_event(a[0].seq).unwrap();
        assert_eq!(s.counts(0).unwrap().registry_events_queued, 0);
        assert_eq!(s.next_registry_event_due().unwrap(), None);
    }

    #[test]
    fn claims_are_ordered_and_limited() {
        for db in crate::store::tests::databases() {
            let s = db.open("a");
            claims_on(&s);
        }
    }

    fn claims_on(s: &Store) {
        let evs: Vec<EventRow> = (0..5).map(|i| ev(&format!("e{i}"), 10)).collect();
        s.enqueue_registry_events(&evs).unwrap();
        let got = s.claim_registry_events(10, 60_000, 3).unwrap();
        assert_eq!(
            got.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            ["e0", "e1", "e2"]
        );
        let rest = s.claim_registry_events(10, 60_000, 3).unwrap();
        assert_eq!(
            rest.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            ["e3", "e4"]
        );
    }
}
