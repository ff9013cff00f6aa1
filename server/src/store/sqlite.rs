//! The SQLite engine: one file, WAL mode, a small pool of connections (see `mod.rs`),
//! behind the store's SQL interface.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use super::StoreError;
use super::sql::{Db, Dialect, Row, Value, Violation};

/// Opens a connection with the store's settings.
pub(super) fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Violation(match f.extended_code {
                    ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => {
                        Violation::Unique
                    }
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Violation::ForeignKey,
                    _ => Violation::Check,
                })
            }
            _ => StoreError::Engine(e.to_string()),
        }
    }
}

fn bind(args: &[Value]) -> impl Iterator<Item = SqlValue> + '_ {
    args.iter().map(|v| match v {
        Value::Null => SqlValue::Null,
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    })
}

impl Db for Connection {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(bind(args)))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(bind(args)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(width);
            for i in 0..width {
                row.push(match r.get::<_, SqlValue>(i)? {
                    SqlValue::Null => Value::Null,
                    SqlValue::Integer(i) => Value::Int(i),
                    SqlValue::Text(s) => Value::Text(s),
                    SqlValue::Blob(b) => Value::Blob(b),
                    SqlValue::Real(f) => {
                        return Err(StoreError::Corrupt(format!("column {i} holds {f}")));
                    }
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}
