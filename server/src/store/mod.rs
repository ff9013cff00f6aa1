//! Metadata store: key records, aliases and the rest of hsmd's metadata, in an
//! embedded SQLite file (one node, `hsmd dev`) or in PostgreSQL (several replicas),
//! chosen by `[store]`.
//!
//! Blocking (call from the blocking pool). Every query is written once, against the
//! engine-neutral interface of `sql.rs`; `sqlite.rs` and `postgres.rs` run it. SQLite's
//! WAL mode lets readers run beside the writer, and a small pool of connections keeps
//! concurrent calls from queueing on one; PostgreSQL has a pool of its own. State
//! changes are compare-and-set on the expected state, so two replicas (or two calls)
//! never both win a transition.

mod cache;
mod certs;
mod imports;
pub(crate) mod local_postgres;
pub(crate) mod postgres;
mod rate_buckets;
mod registry_events;
mod rows;
mod signing_policies;
mod sql;
mod sqlite;
mod stats;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use uuid::Uuid;

use crate::domain::record::{KeyRecord, KeyVersion, Rotation};
use crate::domain::spec::{KeyState, KeyUsage};
pub(crate) use certs::StoredChain;
pub(crate) use imports::{ImportToken, ImportedMaterial};
pub(crate) use postgres::PgConfig;
pub(crate) use registry_events::EventRow;
pub(crate) use rows::Alias;
pub(crate) use signing_policies::{PolicyRow, Trigger};
use sql::{Db, Dialect, Violation, args};

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
    /// A write broke a constraint the caller did not expect.
    #[error("metadata store: constraint violated ({0:?})")]
    Violation(Violation),
    /// The database cannot be reached or did not answer in time: try again.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store: {0}")]
    Engine(String),
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

/// Which database, and the node this process is.
#[derive(Debug, Clone)]
pub(crate) enum StoreConfig {
    Sqlite(std::path::PathBuf),
    Postgres(PgConfig),
}

impl StoreConfig {
    /// For messages: the file, or the URL with any password in it masked.
    pub(crate) fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite(p) => p.display().to_string(),
            StoreConfig::Postgres(pg) => PgConfig::redacted(&pg.url),
        }
    }
}

enum Engine {
    Sqlite {
        path: std::path::PathBuf,
        idle: Mutex<Vec<Connection>>,
    },
    Postgres(Arc<postgres::Engine>),
}

/// The metadata store.
pub(crate) struct Store {
    engine: Engine,
    cache: cache::KeyCache,
    /// This replica's name (empty for SQLite's one node): whose creations are whose.
    node: String,
}

/// Work only one replica at a time may do, held until dropped (see [`Store::exclusive`]).
pub(crate) enum Exclusive {
    /// One node: nobody else to exclude.
    Alone,
    Locked(#[allow(dead_code)] postgres::PgLock),
}

impl Store {
    /// Opens (creating if needed) the SQLite store and its schema.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = sqlite::connect(path)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(certs::SCHEMA)?;
        conn.execute_batch(imports::SCHEMA)?;
        conn.execute_batch(signing_policies::SCHEMA)?;
        conn.execute_batch(registry_events::SCHEMA)?;
        conn.execute_batch(rate_buckets::SCHEMA)?;
        Ok(Store {
            engine: Engine::Sqlite {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![conn]),
            },
            cache: cache::KeyCache::sqlite(sqlite::connect(path)?)?,
            node: String::new(),
        })
    }

    /// Opens the store `cfg` names, as node `node`: PostgreSQL's schema is migrated
    /// first if it is behind.
    pub(crate) fn connect(cfg: &StoreConfig, node: &str) -> Result<Self, StoreError> {
        match cfg {
            StoreConfig::Sqlite(path) => Store::open(path),
            StoreConfig::Postgres(pg) => {
                let engine = Arc::new(postgres::Engine::open(pg)?);
                Ok(Store {
                    cache: cache::KeyCache::watched(engine.watch.clone()),
                    engine: Engine::Postgres(engine),
                    node: node.to_string(),
                })
            }
        }
    }

    /// Whether replicas share this store (PostgreSQL): rate limits are then the
    /// cluster's.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Runs `f` on a pooled connection.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Sqlite { path, idle } => {
                let conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut conn = match conn {
                    Some(c) => c,
                    None => sqlite::connect(path)?,
                };
                let out = f(&mut conn);
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < 8 {
                    idle.push(conn);
                }
                out
            }
            Engine::Postgres(e) => f(&mut e.conn()?),
        }
    }

    /// Runs `f` in one transaction on a pooled connection.
    fn tx<T>(&self, f: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(|c| c.transaction(f))
    }

    /// Holds the cluster-wide lock `name` while the result lives, or `None` if another
    /// replica holds it (it is doing that work now). A replica that dies holding it
    /// loses it.
    pub(crate) fn exclusive(&self, name: &str) -> Result<Option<Exclusive>, StoreError> {
        match &self.engine {
            Engine::Sqlite { .. } => Ok(Some(Exclusive::Alone)),
            Engine::Postgres(e) => Ok(e.try_lock(lock_key(name))?.map(Exclusive::Locked)),
        }
    }

    /// As [`Store::exclusive`], waiting (at most 10 s) for a replica that holds it.
    pub(crate) fn exclusive_wait(&self, name: &str) -> Result<Exclusive, StoreError> {
        match &self.engine {
            Engine::Sqlite { .. } => Ok(Exclusive::Alone),
            Engine::Postgres(e) => Ok(Exclusive::Locked(e.lock(lock_key(name))?)),
        }
    }

    /// Inserts a new key, and its alias if given, in one transaction.
    pub(crate) fn insert_key(
        &self,
        key: &KeyRecord,
        alias: Option<&str>,
        idempotency_token: Option<&str>,
    ) -> Result<(), StoreError> {
        self.tx(|c| {
            rows::insert_key(c, key, idempotency_token)?;
            if let Some(a) = alias {
                rows::insert_alias(c, a, key.id, key.create_time)?;
            }
            if let Some(r) = key.rotation {
                c.execute(
                    "INSERT INTO key_rotation (key_id, period_days, next_time) VALUES (?1, ?2, ?3)",
                    args![key.id, r.period_days, r.next_time],
                )?;
            }
            Ok(())
        })
    }

    /// A key by id, with its aliases: remembered from an earlier call while the
    /// database is unchanged (see `cache.rs`), else read — also when the version
    /// cannot be read at once.
    pub(crate) fn get_key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        let Ok(at) = self.cache.version() else {
            return self.with(|c| rows::get_key(c, id));
        };
        if let Some(key) = self.cache.key(id) {
            return Ok(Some(key));
        }
        let key = self.with(|c| rows::get_key(c, id))?;
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
        self.with(|c| {
            let id = c.query_opt(
                "SELECT key_id FROM keys WHERE created_by = ?1 AND idempotency_token = ?2",
                args![principal, token],
            )?;
            match id {
                Some(row) => rows::get_key(c, row.get(0)?),
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
        let id = self.with(|c| {
            c.query_opt("SELECT key_id FROM aliases WHERE alias = ?1", args![alias])?
                .map(|r| r.get(0))
                .transpose()
        })?;
        if let (Some(at), Some(id)) = (at, id) {
            self.cache.keep_alias(at, alias, id);
        }
        Ok(id)
    }

    /// Keys matching a filter, newest first, at most `filter.limit`.
    pub(crate) fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| rows::list_keys(c, filter))
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
        self.with(|c| {
            let n = c.execute(
                "UPDATE keys SET state = ?1, deletion_time = ?2, destroy_time = ?3
                 WHERE key_id = ?4 AND state = ?5",
                args![to.name(), deletion_time, destroy_time, id, from.name()],
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
        self.tx(|c| {
            for table in ["aliases", "key_versions", "key_rotation", "keys"] {
                c.execute(&format!("DELETE FROM {table} WHERE key_id = ?1"), args![id])?;
            }
            Ok(())
        })
    }

    /// Keys PENDING_DELETION whose deletion time is at or before `now`.
    pub(crate) fn due_for_deletion(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            c.column(
                "SELECT key_id FROM keys WHERE state = 'PENDING_DELETION' AND deletion_time <= ?1",
                args![now],
            )
        })
    }

    /// The CKA_IDs of every object that should be in the token: the key id of each key
    /// with material (not destroyed, not awaiting import, not an EXTERNAL key without
    /// material pending deletion) and the object id of each of its later versions.
    pub(crate) fn keys_with_material(&self) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            c.column(
                "WITH live AS (
                   SELECT k.key_id FROM keys k LEFT JOIN key_material m ON m.key_id = k.key_id
                   WHERE k.state NOT IN ('DESTROYED', 'PENDING_IMPORT')
                     AND (k.origin <> 'EXTERNAL' OR m.import_time IS NOT NULL))
                 SELECT key_id FROM live
                 UNION ALL
                 SELECT v.object_id FROM key_versions v JOIN live l ON l.key_id = v.key_id",
                &[],
            )
        })
    }

    /// Notes that token objects with this CKA_ID are about to be made (CreateKey,
    /// RotateKey, ImportKeyMaterial): if hsmd dies before the store records them, start-up reconciliation
    /// finds the note and destroys the half-made objects.
    pub(crate) fn begin_creation(&self, object_id: Uuid, now: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let sql = match c.dialect() {
                Dialect::Sqlite => {
                    "INSERT INTO creations (object_id, start_time) VALUES (?1, ?2)
                     ON CONFLICT (object_id) DO UPDATE SET start_time = excluded.start_time"
                }
                // Each replica's creations are its own (see `creations`).
                Dialect::Postgres => {
                    "INSERT INTO creations (object_id, start_time, node) VALUES (?1, ?2, ?3)
                     ON CONFLICT (object_id) DO UPDATE SET start_time = excluded.start_time,
                       node = excluded.node"
                }
            };
            let n = match c.dialect() {
                Dialect::Sqlite => c.execute(sql, args![object_id, now])?,
                Dialect::Postgres => c.execute(sql, args![object_id, now, &self.node])?,
            };
            debug_assert_eq!(n, 1);
            Ok(())
        })
    }

    /// Drops the note of [`Store::begin_creation`]: the objects are recorded or gone.
    pub(crate) fn end_creation(&self, object_id: Uuid) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM creations WHERE object_id = ?1",
                args![object_id],
            )?;
            Ok(())
        })
    }

    /// Creations this node began and never ended (it died in between). Another
    /// replica's creations may be under way right now: they are left to it.
    pub(crate) fn creations(&self) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| match c.dialect() {
            Dialect::Sqlite => c.column("SELECT object_id FROM creations ORDER BY object_id", &[]),
            Dialect::Postgres => c.column(
                "SELECT object_id FROM creations WHERE node = ?1 ORDER BY object_id",
                args![&self.node],
            ),
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
        self.tx(|c| {
            // Only while the key is ENABLED: a rotation racing ScheduleKeyDeletion or
            // DisableKey adds nothing (Conflict, and the caller destroys its object).
            // The key row's lock makes the check see a state change committed by
            // another replica meanwhile (PostgreSQL's EXISTS alone locks nothing).
            rows::lock_key(c, id)?;
            let r = c.execute(
                "INSERT INTO key_versions (key_id, version, object_id, create_time)
                 SELECT CAST(?1 AS TEXT), CAST(?2 AS BIGINT), CAST(?3 AS TEXT), CAST(?4 AS BIGINT)
                 WHERE EXISTS (SELECT 1 FROM keys WHERE key_id = ?1 AND state = 'ENABLED')",
                args![
                    id,
                    i64::from(version.version),
                    version.object_id,
                    version.create_time
                ],
            );
            match r {
                Ok(1) => {}
                Ok(_) | Err(StoreError::Violation(_)) => return Err(StoreError::Conflict),
                Err(e) => return Err(e),
            }
            if let Some(t) = next_rotation {
                c.execute(
                    "UPDATE key_rotation SET next_time = ?1 WHERE key_id = ?2",
                    args![t, id],
                )?;
            }
            Ok(())
        })
    }

    /// Turns a key's automatic rotation on (or changes it), or off with `None`.
    pub(crate) fn set_rotation(
        &self,
        id: Uuid,
        rotation: Option<Rotation>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            match rotation {
                Some(r) => c.execute(
                    "INSERT INTO key_rotation (key_id, period_days, next_time) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key_id) DO UPDATE SET period_days = excluded.period_days,
                       next_time = excluded.next_time",
                    args![id, r.period_days, r.next_time],
                )?,
                None => c.execute("DELETE FROM key_rotation WHERE key_id = ?1", args![id])?,
            };
            Ok(())
        })
    }

    /// ENABLED keys whose automatic rotation is due at `now`.
    pub(crate) fn due_for_rotation(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            c.column(
                "SELECT r.key_id FROM key_rotation r JOIN keys k ON k.key_id = r.key_id
                 WHERE r.next_time <= ?1 AND k.state = 'ENABLED'",
                args![now],
            )
        })
    }

    /// Creates an alias for a key.
    pub(crate) fn create_alias(
        &self,
        alias: &str,
        key: Uuid,
        now: i64,
    ) -> Result<Alias, StoreError> {
        self.with(|c| {
            rows::insert_alias(c, alias, key, now)?;
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
        self.with(|c| {
            let row = sql::on_violation(
                c.query_opt(
                    "UPDATE aliases SET key_id = ?1, update_time = ?2 WHERE alias = ?3
                     RETURNING alias, key_id, create_time, update_time",
                    args![key, now, alias],
                ),
                |_| StoreError::KeyNotFound,
            )?;
            rows::alias_from_row(&row.ok_or(StoreError::AliasNotFound)?)
        })
    }

    /// Deletes an alias.
    pub(crate) fn delete_alias(&self, alias: &str) -> Result<Uuid, StoreError> {
        self.with(|c| {
            c.query_opt(
                "DELETE FROM aliases WHERE alias = ?1 RETURNING key_id",
                args![alias],
            )?
            .ok_or(StoreError::AliasNotFound)?
            .get(0)
        })
    }

    /// Aliases in name order after `after`, optionally of one key.
    pub(crate) fn list_aliases(
        &self,
        key: Option<Uuid>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Alias>, StoreError> {
        self.with(|c| rows::list_aliases(c, key, after, limit))
    }
}

/// The advisory lock key of a named lock: a stable 63-bit hash (FNV-1a).
fn lock_key(name: &str) -> i64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    i64::try_from(h >> 1).expect("63 bits fit")
}

#[cfg(test)]
mod tests;
