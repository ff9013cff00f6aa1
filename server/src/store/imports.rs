//! Import tokens and imported key material.
//!
//! `import_tokens`: one row per GetParametersForImport; the newest token of a key is the
//! only valid one (older rows carry `superseded_by`), and a token's wrapping key is
//! destroyed in the token once it is superseded or expired (`wrapping_key_destroyed`).
//! `key_material`: per EXTERNAL key, the fingerprint of the first material imported
//! (kept after deletion, so that a re-import must be the same material), and while the
//! key holds material, when it was imported and when it expires.

use uuid::Uuid;

use super::sql::args;
use super::{Store, StoreError, rows};
use crate::domain::spec::KeyState;

/// Created with the rest of the schema at `Store::open`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS import_tokens (
    token_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys (key_id),
    algorithm TEXT NOT NULL,
    wrapping_spec TEXT NOT NULL,
    modulus_len INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    expire_time INTEGER NOT NULL,
    superseded_by TEXT,
    wrapping_key_destroyed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS import_tokens_by_key ON import_tokens (key_id);
CREATE TABLE IF NOT EXISTS key_material (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    fingerprint BLOB NOT NULL,
    key_check_value TEXT,
    import_time INTEGER,
    valid_to INTEGER
);
CREATE INDEX IF NOT EXISTS key_material_by_expiry ON key_material (valid_to);
";

/// One import token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImportToken {
    pub(crate) id: Uuid,
    pub(crate) key_id: Uuid,
    /// Wrapping algorithm name (RSAES_OAEP_SHA_1...).
    pub(crate) algorithm: String,
    /// Wrapping key spec name (RSA_2048...).
    pub(crate) wrapping_spec: String,
    /// The wrapping key's modulus length in bytes.
    pub(crate) modulus_len: usize,
    pub(crate) create_time: i64,
    pub(crate) expire_time: i64,
    /// The token that replaced this one.
    pub(crate) superseded_by: Option<Uuid>,
}

/// What ImportKeyMaterial records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImportedMaterial {
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) key_check_value: Option<String>,
    pub(crate) public_key_der: Option<Vec<u8>>,
    pub(crate) import_time: i64,
    pub(crate) valid_to: Option<i64>,
}

impl Store {
    /// Records a new import token for its key; every older token of the key is
    /// superseded by it.
    pub(crate) fn insert_import_token(&self, t: &ImportToken) -> Result<(), StoreError> {
        self.tx(|c| {
            // Two replicas issuing tokens for one key at once: the second waits here
            // for the first to commit, then supersedes its token ("newest only").
            rows::lock_key(c, t.key_id)?;
            c.execute(
                "UPDATE import_tokens SET superseded_by = ?1 WHERE key_id = ?2 AND superseded_by IS NULL",
                args![t.id, t.key_id],
            )?;
            c.execute(
                "INSERT INTO import_tokens (token_id, key_id, algorithm, wrapping_spec, modulus_len, create_time, expire_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![
                    t.id,
                    t.key_id,
                    &t.algorithm,
                    &t.wrapping_spec,
                    i64::try_from(t.modulus_len).unwrap_or(i64::MAX),
                    t.create_time,
                    t.expire_time
                ],
            )?;
            Ok(())
        })
    }

    /// An import token by id.
    pub(crate) fn get_import_token(&self, id: Uuid) -> Result<Option<ImportToken>, StoreError> {
        self.with(|c| {
            let Some(r) = c.query_opt(
                "SELECT key_id, algorithm, wrapping_spec, modulus_len, create_time, expire_time, superseded_by
                 FROM import_tokens WHERE token_id = ?1",
                args![id],
            )?
            else {
                return Ok(None);
            };
            let modulus_len: i64 = r.get(3)?;
            Ok(Some(ImportToken {
                id,
                key_id: r.get(0)?,
                algorithm: r.get(1)?,
                wrapping_spec: r.get(2)?,
                modulus_len: usize::try_from(modulus_len)
                    .map_err(|_| StoreError::Corrupt(format!("modulus_len {modulus_len}")))?,
                create_time: r.get(4)?,
                expire_time: r.get(5)?,
                superseded_by: r.get(6)?,
            }))
        })
    }

    /// Tokens whose wrapping key is still in the token although the token is superseded
    /// or expired at `now` (or its key is destroyed).
    pub(crate) fn stale_wrapping_keys(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            c.column(
                "SELECT t.token_id FROM import_tokens t JOIN keys k ON k.key_id = t.key_id
                 WHERE t.wrapping_key_destroyed = 0
                   AND (t.superseded_by IS NOT NULL OR t.expire_time <= ?1 OR k.state = 'DESTROYED')",
                args![now],
            )
        })
    }

    /// Notes that a token's wrapping key is gone from the token.
    pub(crate) fn wrapping_key_destroyed(&self, token: Uuid) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE import_tokens SET wrapping_key_destroyed = 1 WHERE token_id = ?1",
                args![token],
            )?;
            Ok(())
        })
    }

    /// The fingerprint of the first material imported for a key, if any.
    pub(crate) fn material_fingerprint(&self, key: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT fingerprint FROM key_material WHERE key_id = ?1",
                args![key],
            )?
            .map(|r| r.get(0))
            .transpose()
        })
    }

    /// Records imported material and moves the key from PENDING_IMPORT to ENABLED, in
    /// one transaction (`Conflict` if the key left PENDING_IMPORT meanwhile). The
    /// fingerprint of the first import is kept.
    pub(crate) fn record_import(&self, key: Uuid, m: &ImportedMaterial) -> Result<(), StoreError> {
        self.tx(|c| {
            let n = c.execute(
                "UPDATE keys SET state = ?1, public_key = COALESCE(?2, public_key)
                 WHERE key_id = ?3 AND state = ?4",
                args![
                    KeyState::Enabled.name(),
                    &m.public_key_der,
                    key,
                    KeyState::PendingImport.name()
                ],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
            c.execute(
                "INSERT INTO key_material (key_id, fingerprint, key_check_value, import_time, valid_to)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key_id) DO UPDATE SET import_time = excluded.import_time,
                   valid_to = excluded.valid_to,
                   key_check_value = COALESCE(key_material.key_check_value, excluded.key_check_value)",
                args![key, &m.fingerprint, &m.key_check_value, m.import_time, m.valid_to],
            )?;
            Ok(())
        })
    }

    /// Moves a key whose material was destroyed from `from` back to PENDING_IMPORT and
    /// clears its import and expiry times (`Conflict` if it left `from` meanwhile).
    pub(crate) fn material_deleted(&self, key: Uuid, from: KeyState) -> Result<(), StoreError> {
        self.tx(|c| {
            let n = c.execute(
                "UPDATE keys SET state = ?1 WHERE key_id = ?2 AND state = ?3",
                args![KeyState::PendingImport.name(), key, from.name()],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
            c.execute(
                "UPDATE key_material SET import_time = NULL, valid_to = NULL WHERE key_id = ?1",
                args![key],
            )?;
            Ok(())
        })
    }

    /// Keys holding imported material whose valid-to is at or before `now`.
    pub(crate) fn expired_material(&self, now: i64) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            c.column(
                "SELECT m.key_id FROM key_material m JOIN keys k ON k.key_id = m.key_id
                 WHERE m.valid_to <= ?1 AND k.state IN ('ENABLED', 'DISABLED')",
                args![now],
            )
        })
    }
}
