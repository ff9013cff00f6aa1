//! Key records remembered between calls, valid while the database is unchanged.
//!
//! A Sign or Decrypt reads its key's record on every call; reading it from SQLite (the
//! key row, its aliases, its import facts) was the largest part of hsmd's own work per
//! call after TLS. The records are kept here instead, tagged with SQLite's
//! `PRAGMA data_version` as seen by a connection that never writes: that number changes
//! whenever any *other* connection commits — this process's pooled connections and
//! other replicas on the same file alike — so one cheap pragma per call tells whether
//! everything remembered is still what the file says. Any commit anywhere forgets
//! everything: writes are rare (key management), reads are the hot path.
//!
//! With PostgreSQL the version is the count of change notifications this replica has
//! heard (`postgres::Watch`), moved at once by its own commits too. A change on another
//! replica is forgotten here when its notification arrives, milliseconds after its
//! commit. Should notifications stop unnoticed, no record is kept longer than
//! [`MAX_AGE`] (3 s): that is the bound on how long a replica may serve a key as it was
//! before another replica changed it (disabled it, moved its alias). While the
//! listening connection is known to be down nothing is kept at all.
//!
//! Order matters for correctness: the version is read *before* the row. A commit after
//! the version read changes the version, so what was cached under the old one is
//! dropped at the next call; a commit before it is visible to the row read. A row is
//! kept only under the version the cache holds, which only ever moves to the newest
//! version read (see `version`).

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use uuid::Uuid;

use super::StoreError;
use super::postgres::Watch;
use crate::domain::record::KeyRecord;

/// Most records kept; past it the cache starts over (it refills from the hot keys).
const MAX_ENTRIES: usize = 10_000;

/// With PostgreSQL, the longest a record is kept (the staleness bound of the README's
/// "Running several replicas").
pub(crate) const MAX_AGE: Duration = Duration::from_secs(3);

pub(super) struct KeyCache {
    watch: Source,
    entries: Mutex<Entries>,
}

/// Where the database version comes from.
enum Source {
    /// SQLite: the read-only connection whose `data_version` is watched.
    Sqlite(Mutex<Connection>),
    /// PostgreSQL: the change notifications heard.
    Notified(Arc<Watch>),
}

#[derive(Default)]
struct Entries {
    version: Option<i64>,
    keys: HashMap<Uuid, (Instant, KeyRecord)>,
    aliases: HashMap<String, (Instant, Uuid)>,
    /// How long an entry may be served (`None`: while the version holds).
    max_age: Option<Duration>,
}

impl Entries {
    fn fresh<T: Clone>(&self, e: Option<&(Instant, T)>) -> Option<T> {
        let (at, v) = e?;
        match self.max_age {
            Some(max) if at.elapsed() >= max => None,
            _ => Some(v.clone()),
        }
    }
}

/// The database version a lookup started from; a record read after it may be kept
/// under it.
#[derive(Clone, Copy)]
pub(super) struct Version(i64, Instant);

impl KeyCache {
    /// Watches `watch`, which must never be used to write. Its busy timeout is cut
    /// short: if SQLite ever has to wait to read the version (WAL recovery, another
    /// process's checkpoint), the lookup falls back to reading the row instead of every
    /// lookup of the process queueing behind this one connection.
    pub(super) fn sqlite(watch: Connection) -> Result<Self, StoreError> {
        watch.busy_timeout(Duration::from_millis(50))?;
        Ok(KeyCache {
            watch: Source::Sqlite(Mutex::new(watch)),
            entries: Mutex::new(Entries::default()),
        })
    }

    /// Keeps records while PostgreSQL's notifications say nothing changed, each at
    /// most [`MAX_AGE`].
    pub(super) fn watched(watch: Arc<Watch>) -> Self {
        KeyCache {
            watch: Source::Notified(watch),
            entries: Mutex::new(Entries {
                max_age: Some(MAX_AGE),
                ..Entries::default()
            }),
        }
    }

    /// Reads the current database version, forgetting everything if it moved. The
    /// entries are updated while the watch connection is still held, so versions reach
    /// them in the order they were read: a slow caller cannot put back an older version
    /// (and with it let an older record be kept) after a newer one was seen.
    pub(super) fn version(&self) -> Result<Version, StoreError> {
        // A record kept under this version is as old as this moment, not as the moment
        // it was kept: its age counts from before the row was read.
        let read_at = Instant::now();
        let conn;
        let v: i64 = match &self.watch {
            Source::Sqlite(c) => {
                conn = c.lock().unwrap_or_else(|p| p.into_inner());
                conn.prepare_cached("PRAGMA data_version")?
                    .query_row([], |r| r.get(0))?
            }
            Source::Notified(w) => w.version().ok_or_else(|| {
                StoreError::Unavailable("store change notifications are not heard".into())
            })?,
        };
        let mut e = self.lock();
        if e.version != Some(v) {
            e.keys.clear();
            e.aliases.clear();
            e.version = Some(v);
        }
        Ok(Version(v, read_at))
    }

    pub(super) fn key(&self, id: Uuid) -> Option<KeyRecord> {
        let e = self.lock();
        e.fresh(e.keys.get(&id))
    }

    pub(super) fn alias(&self, alias: &str) -> Option<Uuid> {
        let e = self.lock();
        e.fresh(e.aliases.get(alias))
    }

    /// Keeps a record read after `at` — unless the database moved on since.
    pub(super) fn keep_key(&self, at: Version, key: &KeyRecord) {
        let mut e = self.lock();
        if e.version == Some(at.0) {
            if e.keys.len() >= MAX_ENTRIES {
                e.keys.clear();
            }
            e.keys.insert(key.id, (at.1, key.clone()));
        }
    }

    pub(super) fn keep_alias(&self, at: Version, alias: &str, id: Uuid) {
        let mut e = self.lock();
        if e.version == Some(at.0) {
            if e.aliases.len() >= MAX_ENTRIES {
                e.aliases.clear();
            }
            e.aliases.insert(alias.to_string(), (at.1, id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
