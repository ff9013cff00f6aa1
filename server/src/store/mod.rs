//! Metadata store: key records and aliases in an embedded SQLite file.
//!
//! Blocking (call from the blocking pool). WAL mode lets readers run beside the writer;
//! a small pool of connections keeps concurrent calls from queueing on one. State
//! changes are compare-and-set on the expected state, so two replicas (or two calls)
//! never both win a transition.

mod cache;
mod certs;
mod imports;
mod registry_events;
mod rows;
mod signing_policies;
mod stats;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::domain::record::{KeyRecord, KeyVersion, Rotation};
use crate::domain::spec::{KeyState, KeyUsage};
pub(crate) use certs::StoredChain;
pub(crate) use imports::{ImportToken, ImportedMaterial};
pub(crate) use registry_events::EventRow;
pub(crate) use rows::Alias;
pub(crate) use signing_policies::{PolicyRow, Trigger};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("alias already exists")]
    AliasExists,
    #[error("alias not found")]
    AliasNotFound,
    #[error("key not found")]
    KeyNotFound,
    /// Another call changed the key's state first.
    #[error("key state changed concurrently")]
    Conflict,
    #[error("metadata store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata store holds a bad row: {0}")]
    Corrupt(String),
}

/// Filters and paging for `list_keys`.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyFilter {
    pub(crate) state: Option<KeyState>,
    pub(crate) usage: Option<KeyUsage>,
    pub(crate) alias_prefix: Option<String>,
    /// Keyset cursor: (create_time, key id) of the last key of the previous page.
    pub(crate) after: Option<(i64, String)>,
    pub(crate) limit: usize,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    usage TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    created_by TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    deletion_time INTEGER,
    destroy_time INTEGER,
    public_key BLOB,
    idempotency_token TEXT,
    UNIQUE (created_by, idempotency_token)
);
CREATE INDEX IF NOT EXISTS keys_by_time ON keys (create_time DESC, key_id DESC);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS aliases_by_key ON aliases (key_id);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    version INTEGER NOT NULL CHECK (version >= 2),
    object_id TEXT NOT NULL UNIQUE,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS key_rotation (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    period_days INTEGER NOT NULL,
    next_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS key_rotation_due ON key_rotation (next_time);
CREATE TABLE IF NOT EXISTS creations (
    object_id TEXT PRIMARY KEY,
    start_time INTEGER NOT NULL
);
";

/// The SQLite metadata store.
pub(crate) struct Store {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
    cache: cache::KeyCache,
}

impl Store {
    /// Opens (creating if needed) the store and its schema.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        let store = Store {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            cache: cache::KeyCache::new(connect(path)?)?,
        };
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(certs::SCHEMA)?;
        conn.execute_batch(imports::SCHEMA)?;
        conn.execute_batch(signing_policies::SCHEMA)?;
        conn.execute_batch(registry_events::SCHEMA)?;
        store
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(store)
    }

    /// Runs `f` on a pooled connection.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match conn {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&mut conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 8 {
            idle.push(conn);
        }
        out
    }

    /// Inserts a new key, and its alias if given, in one transaction.
    pub(crate) fn insert_key(
        &self,
        key: &KeyRecord,
        alias: Option<&str>,
        idempotency_token: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            rows::insert_key(&tx, key, idempotency_token)?;
            if let Some(a) = alias {
                rows::insert_alias(&tx, a, key.id, key.create_time)?;
            }
            if let Some(r) = key.rotation {
                tx.execute(
                    "INSERT INTO key_rotation (key_id, period_days, next_time) VALUES (?1, ?2, ?3)",
                    params![key.id.to_string(), r.period_days, r.next_time],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// A key by id, with its aliases: remembered from an earlier call while the
    /// database is unchanged (see `cache.rs`), else read — also when the version
    /// cannot be read at once.
    pub(crate) fn get_key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        let Ok(at) = self.cache.version() else {
            return self.with(|conn| rows::get_key(conn, id));
        };
        if let Some(key) = self.cache.key(id) {
            return Ok(Some(key));
        }
        let key = self.with(|conn| rows::get_key(conn, id))?;
        if let Some(k) = &key {
            self.cache.keep_key(at, k);
        }
        Ok(key)
    }

    /// The key a principal created with an idempotency token, if any.
    pub(crate) fn key_by_idempotency(
        &self,
        principal: &str,
        token: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|conn| {
            let id: Option<String> = conn
                .query_row(
                    "SELECT key_id FROM keys WHERE created_by = ?1 AND idempotency_token = ?2",
                    params![principal, token],
                    |r| r.get(0),
                )
                .optional()?;
            match id {
                Some(id) => rows::get_key(conn, rows::parse_uuid(&id)?),
                None => Ok(None),
            }
        })
    }

    /// The key an alias points at.
    pub(crate) fn resolve_alias(&self, alias: &str) -> Result<Option<Uuid>, StoreError> {
        let at = self.cache.version().ok();
        if let Some(id) = at.and_then(|_| self.cache.alias(alias)) {
            return Ok(Some(id));
        }
        let id = self.with(|conn| {
            let id: Option<String> = conn
                .query_row(
                    "SELECT key_id FROM aliases WHERE alias = ?1",
                    [alias],
                    |r| r.get(0),
                )
                .optional()?;
            id.map(|s| rows::parse_uuid(&s)).transpose()
        })?;
        if let (Some(at), Some(id)) = (at, id) {
            self.cache.keep_alias(at, alias, id);
        }
        Ok(id)
    }

    /// Keys matching a filter, newest first, at most `filter.limit`.
    pub(crate) fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|conn| rows::list_keys(conn, filter))
    }

    /// Moves a key from `from` to `to` (compare-and-set), setting the deletion and
    /// destruction times. `Conflict` if the key is no longer in `from`.
    pub(crate) fn set_state(
        &self,
        id: Uuid,
        from: KeyState,
        to: KeyState,
        deletion_time: Option<i64>,
        destroy_time: Option<i64>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE keys SET state = ?1, deletion_time = ?2, destroy_time = ?3
                 WHERE key_id = ?4 AND state = ?5",
                params![
                    to.name(),
                    deletion_time,
                    destroy_time,
                    id.to_string(),
                    from.name()
                ],
            )?;
            if n == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
    }

    /// Removes a key row (tests: a replica that forgets a key).
    #[cfg(test)]
    pub(crate) fn delete_key(&self, id: Uuid) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM aliases WHERE key_id = ?1", [id.to_string()])?;
            tx.execute(
                "DELETE FROM key_versions WHERE key_id = ?1",
                [id.to_string()],
            )?;
            tx.execute(
                "DELETE FROM key_rotation WHERE key_id = ?1",
                [id.to_string()],
            )?;
            tx.execute("DELETE FROM keys WHERE key_id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Keys PENDING_DELETION whose deletion time is at or before `now`.
    pub(crate) fn due_for_deletion(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT key_id FROM keys WHERE state = 'PENDING_DELETION' AND deletion_time <= ?1",
            )?;
            let ids = stmt.query_map([now], |r| r.get::<_, String>(0))?;
            ids.map(|s| rows::parse_uuid(&s?)).collect()
        })
    }

    /// The CKA_IDs of every object that should be in the token: the key id of each key
    /// with material (not destroyed, not awaiting import, not an EXTERNAL key without
    /// material pending deletion) and the object id of each of its later versions.
    pub(crate) fn keys_with_material(&self) -> Result<Vec<Uuid>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "WITH live AS (
                   SELECT k.key_id FROM keys k LEFT JOIN key_material m ON m.key_id = k.key_id
                   WHERE k.state NOT IN ('DESTROYED', 'PENDING_IMPORT')
                     AND (k.origin <> 'EXTERNAL' OR m.import_time IS NOT NULL))
                 SELECT key_id FROM live
                 UNION ALL
                 SELECT v.object_id FROM key_versions v JOIN live l ON l.key_id = v.key_id",
            )?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
            ids.map(|s| rows::parse_uuid(&s?)).collect()
        })
    }

    /// Notes that token objects with this CKA_ID are about to be made (CreateKey,
    /// RotateKey, ImportKeyMaterial): if hsmd dies before the store records them, start-up reconciliation
    /// finds the note and destroys the half-made objects.
    pub(crate) fn begin_creation(&self, object_id: Uuid, now: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO creations (object_id, start_time) VALUES (?1, ?2)",
                rusqlite::params![object_id.to_string(), now],
            )?;
            Ok(())
        })
    }

    /// Drops the note of [`Store::begin_creation`]: the objects are recorded or gone.
    pub(crate) fn end_creation(&self, object_id: Uuid) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM creations WHERE object_id = ?1",
                [object_id.to_string()],
            )?;
            Ok(())
        })
    }

    /// Creations begun and never ended (hsmd died in between).
    pub(crate) fn creations(&self) -> Result<Vec<Uuid>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT object_id FROM creations ORDER BY object_id")?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
            ids.map(|s| rows::parse_uuid(&s?)).collect()
        })
    }

    /// Records a key's next version, made in the token as `version.object_id`, and moves
    /// its next automatic rotation to `next_rotation` (when it has one). `Conflict` if
    /// another call added that version first or the key is no longer ENABLED.
    pub(crate) fn add_version(
        &self,
        id: Uuid,
        version: &KeyVersion,
        next_rotation: Option<i64>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            // Only while the key is ENABLED: a rotation racing ScheduleKeyDeletion or
            // DisableKey adds nothing (Conflict, and the caller destroys its object).
            let r = tx.execute(
                "INSERT INTO key_versions (key_id, version, object_id, create_time)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS
                   (SELECT 1 FROM keys WHERE key_id = ?1 AND state = 'ENABLED')",
                params![
                    id.to_string(),
                    version.version,
                    version.object_id.to_string(),
                    version.create_time
                ],
            );
            match r {
                Ok(1) => {}
                Ok(_) => return Err(StoreError::Conflict),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::Conflict);
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(t) = next_rotation {
                tx.execute(
                    "UPDATE key_rotation SET next_time = ?1 WHERE key_id = ?2",
                    params![t, id.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Turns a key's automatic rotation on (or changes it), or off with `None`.
    pub(crate) fn set_rotation(
        &self,
        id: Uuid,
        rotation: Option<Rotation>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            match rotation {
                Some(r) => conn.execute(
                    "INSERT INTO key_rotation (key_id, period_days, next_time) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key_id) DO UPDATE SET period_days = ?2, next_time = ?3",
                    params![id.to_string(), r.period_days, r.next_time],
                )?,
                None => conn.execute(
                    "DELETE FROM key_rotation WHERE key_id = ?1",
                    [id.to_string()],
                )?,
            };
            Ok(())
        })
    }

    /// ENABLED keys whose automatic rotation is due at `now`.
    pub(crate) fn due_for_rotation(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT r.key_id FROM key_rotation r JOIN keys k ON k.key_id = r.key_id
                 WHERE r.next_time <= ?1 AND k.state = 'ENABLED'",
            )?;
            let ids = stmt.query_map([now], |r| r.get::<_, String>(0))?;
            ids.map(|s| rows::parse_uuid(&s?)).collect()
        })
    }

    /// Creates an alias for a key.
    pub(crate) fn create_alias(
        &self,
        alias: &str,
        key: Uuid,
        now: i64,
    ) -> Result<Alias, StoreError> {
        self.with(|conn| {
            rows::insert_alias(conn, alias, key, now)?;
            Ok(Alias {
                name: alias.to_string(),
                key_id: key,
                create_time: now,
                update_time: now,
            })
        })
    }

    /// Points an alias at another key.
    pub(crate) fn update_alias(
        &self,
        alias: &str,
        key: Uuid,
        now: i64,
    ) -> Result<Alias, StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE aliases SET key_id = ?1, update_time = ?2 WHERE alias = ?3",
                params![key.to_string(), now, alias],
            )?;
            if n == 0 {
                return Err(StoreError::AliasNotFound);
            }
            rows::get_alias(conn, alias)?.ok_or(StoreError::AliasNotFound)
        })
    }

    /// Deletes an alias.
    pub(crate) fn delete_alias(&self, alias: &str) -> Result<Uuid, StoreError> {
        self.with(|conn| {
            let a = rows::get_alias(conn, alias)?.ok_or(StoreError::AliasNotFound)?;
            conn.execute("DELETE FROM aliases WHERE alias = ?1", [alias])?;
            Ok(a.key_id)
        })
    }

    /// Aliases in name order after `after`, optionally of one key.
    pub(crate) fn list_aliases(
        &self,
        key: Option<Uuid>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Alias>, StoreError> {
        self.with(|conn| rows::list_aliases(conn, key, after, limit))
    }
}

/// Opens a connection with the store's settings.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

#[cfg(test)]
mod tests;
