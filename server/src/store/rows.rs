//! Row-level SQL for the store: reading and writing key and alias rows.

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

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

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("key id {s:?}")))
}

fn parse<T>(what: &str, v: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, StoreError> {
    f(v).ok_or_else(|| StoreError::Corrupt(format!("{what} {v:?}")))
}

fn key_from_row(row: &Row<'_>) -> Result<KeyRecord, StoreError> {
    let id: String = row.get(0)?;
    let tags: String = row.get(6)?;
    Ok(KeyRecord {
        id: parse_uuid(&id)?,
        spec: parse("spec", &row.get::<_, String>(1)?, KeySpec::from_name)?,
        usage: parse("usage", &row.get::<_, String>(2)?, KeyUsage::from_name)?,
        origin: parse("origin", &row.get::<_, String>(3)?, KeyOrigin::from_name)?,
        state: parse("state", &row.get::<_, String>(4)?, KeyState::from_name)?,
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
fn complete(conn: &Connection, key: &mut KeyRecord) -> Result<(), StoreError> {
    key.aliases = aliases_of(conn, key.id)?;
    key.versions = KeyRecord::first_version(key.id, key.create_time);
    let mut stmt = conn.prepare_cached(
        "SELECT version, object_id, create_time FROM key_versions WHERE key_id = ?1 ORDER BY version",
    )?;
    let mut rows = stmt.query([key.id.to_string()])?;
    while let Some(r) = rows.next()? {
        key.versions.push(KeyVersion {
            version: r.get(0)?,
            object_id: parse_uuid(&r.get::<_, String>(1)?)?,
            create_time: r.get(2)?,
        });
    }
    let mut stmt =
        conn.prepare_cached("SELECT period_days, next_time FROM key_rotation WHERE key_id = ?1")?;
    key.rotation = stmt
        .query_row([key.id.to_string()], |r| {
            Ok(Rotation {
                period_days: r.get(0)?,
                next_time: r.get(1)?,
            })
        })
        .optional()?;
    Ok(())
}

fn aliases_of(conn: &Connection, id: Uuid) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT alias FROM aliases WHERE key_id = ?1 ORDER BY alias")?;
    let names = stmt.query_map([id.to_string()], |r| r.get::<_, String>(0))?;
    Ok(names.collect::<Result<_, _>>()?)
}

pub(crate) fn insert_key(
    conn: &Connection,
    k: &KeyRecord,
    token: Option<&str>,
) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&k.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.execute(
        &format!("INSERT INTO keys ({KEY_COLUMNS}, idempotency_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
            k.id.to_string(),
            k.spec.name(),
            k.usage.name(),
            k.origin.name(),
            k.state.name(),
            k.description,
            tags,
            k.created_by,
            k.create_time,
            k.deletion_time,
            k.destroy_time,
            k.public_key_der,
            token,
        ],
    )?;
    Ok(())
}

pub(crate) fn get_key(conn: &Connection, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_KEY} WHERE k.key_id = ?1"))?;
    let mut rows = stmt.query([id.to_string()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut key = key_from_row(row)?;
    complete(conn, &mut key)?;
    Ok(Some(key))
}

pub(crate) fn list_keys(conn: &Connection, f: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
    let mut sql = format!("{SELECT_KEY} WHERE 1=1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    match f.state {
        Some(s) => {
            args.push(Box::new(s.name()));
            sql += &format!(" AND k.state = ?{}", args.len());
        }
        None => sql += " AND k.state <> 'DESTROYED'",
    }
    if let Some(u) = f.usage {
        args.push(Box::new(u.name()));
        sql += &format!(" AND k.usage = ?{}", args.len());
    }
    if let Some(p) = &f.alias_prefix {
        let escaped = p
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(Box::new(format!("{escaped}%")));
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM aliases a WHERE a.key_id = k.key_id AND a.alias LIKE ?{} ESCAPE '\\')",
            args.len()
        );
    }
    if let Some((t, id)) = &f.after {
        args.push(Box::new(*t));
        args.push(Box::new(id.clone()));
        let (a, b) = (args.len() - 1, args.len());
        sql +=
            &format!(" AND (k.create_time < ?{a} OR (k.create_time = ?{a} AND k.key_id < ?{b}))");
    }
    args.push(Box::new(f.limit as i64));
    sql += &format!(
        " ORDER BY k.create_time DESC, k.key_id DESC LIMIT ?{}",
        args.len()
    );
    let mut stmt = conn.prepare(&sql)?;
    let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|b| b.as_ref()).collect();
    let mut rows = stmt.query(params.as_slice())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(key_from_row(row)?);
    }
    for k in &mut out {
        complete(conn, k)?;
    }
    Ok(out)
}

pub(crate) fn insert_alias(
    conn: &Connection,
    alias: &str,
    key: Uuid,
    now: i64,
) -> Result<(), StoreError> {
    let r = conn.execute(
        "INSERT INTO aliases (alias, key_id, create_time, update_time) VALUES (?1, ?2, ?3, ?3)",
        params![alias, key.to_string(), now],
    );
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Err(StoreError::AliasExists)
        }
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            Err(StoreError::KeyNotFound)
        }
        Err(e) => Err(e.into()),
    }
}

fn alias_from_row(r: &Row<'_>) -> Result<Alias, StoreError> {
    Ok(Alias {
        name: r.get(0)?,
        key_id: parse_uuid(&r.get::<_, String>(1)?)?,
        create_time: r.get(2)?,
        update_time: r.get(3)?,
    })
}

pub(crate) fn get_alias(conn: &Connection, alias: &str) -> Result<Option<Alias>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alias, key_id, create_time, update_time FROM aliases WHERE alias = ?1",
    )?;
    let mut rows = stmt.query([alias])?;
    rows.next()?.map(alias_from_row).transpose()
}

pub(crate) fn list_aliases(
    conn: &Connection,
    key: Option<Uuid>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Alias>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alias, key_id, create_time, update_time FROM aliases
         WHERE (?1 IS NULL OR key_id = ?1) AND alias > ?2 ORDER BY alias LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![
        key.map(|k| k.to_string()),
        after.unwrap_or(""),
        limit as i64
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(alias_from_row(r)?);
    }
    Ok(out)
}
