//! Row-level SQL for the store: reading and writing key and alias rows.

use uuid::Uuid;

use super::sql::{Db, Dialect, Row, Value, Violation, args, on_violation};
use super::{KeyFilter, StoreError};
use crate::domain::record::{KeyRecord, KeyVersion, Rotation};
use crate::domain::spec::{KeyOrigin, KeySpec, KeyState, KeyUsage};

/// One alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alias {
    /// Full name, "alias/NAME".
    pub(crate) name: String,
    pub(crate) key_id: Uuid,
    pub(crate) create_time: i64,
    pub(crate) update_time: i64,
}

const KEY_COLUMNS: &str = "key_id, spec, usage, origin, state, description, tags, created_by, \
                           create_time, deletion_time, destroy_time, public_key";

/// What `key_from_row` reads: the key row and its imported material's row, if any.
const SELECT_KEY: &str = "SELECT k.key_id, k.spec, k.usage, k.origin, k.state, k.description, \
                          k.tags, k.created_by, k.create_time, k.deletion_time, k.destroy_time, \
                          k.public_key, m.import_time, m.valid_to, m.key_check_value \
                          FROM keys k LEFT JOIN key_material m ON m.key_id = k.key_id";

fn parse<T>(what: &str, v: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, StoreError> {
    f(v).ok_or_else(|| StoreError::Corrupt(format!("{what} {v:?}")))
}

fn key_from_row(row: &Row) -> Result<KeyRecord, StoreError> {
    let tags: String = row.get(6)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        spec: parse("spec", &row.get::<String>(1)?, KeySpec::from_name)?,
        usage: parse("usage", &row.get::<String>(2)?, KeyUsage::from_name)?,
        origin: parse("origin", &row.get::<String>(3)?, KeyOrigin::from_name)?,
        state: parse("state", &row.get::<String>(4)?, KeyState::from_name)?,
        description: row.get(5)?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
        created_by: row.get(7)?,
        create_time: row.get(8)?,
        deletion_time: row.get(9)?,
        destroy_time: row.get(10)?,
        public_key_der: row.get(11)?,
        import_time: row.get(12)?,
        valid_to: row.get(13)?,
        key_check_value: row.get(14)?,
        aliases: Vec::new(),
        versions: Vec::new(),
        rotation: None,
    })
}

/// Fills in what a key row joins from other tables: aliases, versions, rotation.
fn complete(c: &mut dyn Db, key: &mut KeyRecord) -> Result<(), StoreError> {
    key.aliases = c.column(
        "SELECT alias FROM aliases WHERE key_id = ?1 ORDER BY alias",
        args![key.id],
    )?;
    key.versions = KeyRecord::first_version(key.id, key.create_time);
    for r in c.query(
        "SELECT version, object_id, create_time FROM key_versions WHERE key_id = ?1 ORDER BY version",
        args![key.id],
    )? {
        key.versions.push(KeyVersion {
            version: r.get(0)?,
            object_id: r.get(1)?,
            create_time: r.get(2)?,
        });
    }
    key.rotation = c
        .query_opt(
            "SELECT period_days, next_time FROM key_rotation WHERE key_id = ?1",
            args![key.id],
        )?
        .map(|r| {
            Ok::<_, StoreError>(Rotation {
                period_days: r.get(0)?,
                next_time: r.get(1)?,
            })
        })
        .transpose()?;
    Ok(())
}

pub(crate) fn insert_key(
    c: &mut dyn Db,
    k: &KeyRecord,
    token: Option<&str>,
) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&k.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute(
        &format!("INSERT INTO keys ({KEY_COLUMNS}, idempotency_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        args![
            k.id,
            k.spec.name(),
            k.usage.name(),
            k.origin.name(),
            k.state.name(),
            &k.description,
            tags,
            &k.created_by,
            k.create_time,
            k.deletion_time,
            k.destroy_time,
            &k.public_key_der,
            token,
        ],
    )?;
    Ok(())
}

/// Within a transaction: holds the key row's write lock until it ends, so that a
/// read-then-write on the key's other rows is not interleaved with another replica's.
/// SQLite's transactions hold the whole file's write lock already.
pub(crate) fn lock_key(c: &mut dyn Db, id: Uuid) -> Result<(), StoreError> {
    if c.dialect() == Dialect::Postgres {
        c.query(
            "SELECT key_id FROM keys WHERE key_id = ?1 FOR UPDATE",
            args![id],
        )?;
    }
    Ok(())
}

pub(crate) fn get_key(c: &mut dyn Db, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
    let Some(row) = c.query_opt(&format!("{SELECT_KEY} WHERE k.key_id = ?1"), args![id])? else {
        return Ok(None);
    };
    let mut key = key_from_row(&row)?;
    complete(c, &mut key)?;
    Ok(Some(key))
}

pub(crate) fn list_keys(c: &mut dyn Db, f: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
    let mut sql = format!("{SELECT_KEY} WHERE 1=1");
    let mut args: Vec<Value> = Vec::new();
    match f.state {
        Some(s) => {
            args.push(s.name().into());
            sql += &format!(" AND k.state = ?{}", args.len());
        }
        None => sql += " AND k.state <> 'DESTROYED'",
    }
    if let Some(u) = f.usage {
        args.push(u.name().into());
        sql += &format!(" AND k.usage = ?{}", args.len());
    }
    if let Some(p) = &f.alias_prefix {
        let escaped = p
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(format!("{escaped}%").into());
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM aliases a WHERE a.key_id = k.key_id AND a.alias LIKE ?{} ESCAPE '\\')",
            args.len()
        );
    }
    if let Some((t, id)) = &f.after {
        args.push((*t).into());
        args.push(id.into());
        let (a, b) = (args.len() - 1, args.len());
        sql +=
            &format!(" AND (k.create_time < ?{a} OR (k.create_time = ?{a} AND k.key_id < ?{b}))");
    }
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    sql += &format!(
        " ORDER BY k.create_time DESC, k.key_id DESC LIMIT ?{}",
        args.len()
    );
    let mut out = c
        .query(&sql, &args)?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for k in &mut out {
        complete(c, k)?;
    }
    Ok(out)
}

pub(crate) fn insert_alias(
    c: &mut dyn Db,
    alias: &str,
    key: Uuid,
    now: i64,
) -> Result<(), StoreError> {
    let r = c.execute(
        "INSERT INTO aliases (alias, key_id, create_time, update_time) VALUES (?1, ?2, ?3, ?3)",
        args![alias, key, now],
    );
    on_violation(r, |v| match v {
        Violation::Unique => StoreError::AliasExists,
        Violation::ForeignKey => StoreError::KeyNotFound,
        Violation::Check => StoreError::Violation(v),
    })?;
    Ok(())
}

pub(crate) fn alias_from_row(r: &Row) -> Result<Alias, StoreError> {
    Ok(Alias {
        name: r.get(0)?,
        key_id: r.get(1)?,
        create_time: r.get(2)?,
        update_time: r.get(3)?,
    })
}

pub(crate) fn list_aliases(
    c: &mut dyn Db,
    key: Option<Uuid>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Alias>, StoreError> {
    c.query(
        "SELECT alias, key_id, create_time, update_time FROM aliases
         WHERE (CAST(?1 AS TEXT) IS NULL OR key_id = ?1) AND alias > ?2 ORDER BY alias LIMIT ?3",
        args![
            key,
            after.unwrap_or(""),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
    )?
    .iter()
    .map(alias_from_row)
    .collect()
}
