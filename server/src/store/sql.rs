//! The one SQL interface the store's queries are written against, so that each query
//! exists once for both engines: SQLite (the embedded default, `sqlite.rs` here) and
//! PostgreSQL (replicas, `postgres.rs`).
//!
//! Queries use `?N` placeholders (PostgreSQL's driver is handed `$N`), the SQL both
//! engines share (`ON CONFLICT ... DO UPDATE`, `RETURNING`, CTEs), integers for
//! numbers and booleans, text for ids and JSON, blobs for DER. Where the engines
//! differ, a query asks [`Db::dialect`]. Results are read whole into [`Row`]s:
//! the store's queries return few rows (listing pages are capped).

use uuid::Uuid;

use super::StoreError;

/// A bound parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Self {
        Value::Blob(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Self {
        v.clone().map_or(Value::Null, Into::into)
    }
}

/// `args![a, b]`: the parameters of a query, each converted with `Value::from`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($v)),*][..]
    };
}
pub(crate) use args;

/// A column value read back as a Rust type.
pub(crate) trait FromValue: Sized {
    /// `None`: the value is not of this type.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl FromValue for Uuid {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Uuid::parse_str(s).ok(),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(super) Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a missing column or a value of another type is a corrupt
    /// row (the schema says what each column holds).
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {i}")))?;
        T::from_value(v).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "column {i} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// The engine behind a connection, for the few queries that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Which constraint a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A primary key or unique constraint.
    Unique,
    ForeignKey,
    /// A CHECK or NOT NULL constraint.
    Check,
}

/// A connection of either engine.
pub(crate) trait Db {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError>;
    /// Runs a query (or a statement with `RETURNING`); returns its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs statements without parameters (transaction control).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    fn dialect(&self) -> Dialect;
}

impl dyn Db + '_ {
    /// The first row of a query, if any.
    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Column 0 of every row.
    pub(crate) fn column<T: FromValue>(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, args)?.iter().map(|r| r.get(0)).collect()
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled back if not.
    /// SQLite's takes the write lock at once (IMMEDIATE), so two writers never both
    /// read a state and then both change it.
    pub(crate) fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                // Best effort: a failed ROLLBACK means the connection is broken, and
                // the engine discards the open transaction with it.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// `StoreError::Violation(v)` if `e` is a constraint violation `v`, else `e`:
/// `Ok(n)` stays.
pub(crate) fn on_violation<T>(
    r: Result<T, StoreError>,
    map: impl FnOnce(Violation) -> StoreError,
) -> Result<T, StoreError> {
    match r {
        Err(StoreError::Violation(v)) => Err(map(v)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_both_ways() {
        let id = Uuid::new_v4();
        let row = Row(vec![
            Value::from(7i64),
            Value::from(true),
            Value::from("t"),
            Value::from(vec![1u8]),
            Value::from(id),
            Value::from(None::<i64>),
        ]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert!(row.get::<bool>(1).unwrap());
        assert_eq!(row.get::<String>(2).unwrap(), "t");
        assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![1]);
        assert_eq!(row.get::<Uuid>(4).unwrap(), id);
        assert_eq!(row.get::<Option<i64>>(5).unwrap(), None);
        assert_eq!(row.get::<Option<i64>>(0).unwrap(), Some(7));
        // The wrong type, a negative u32, a missing column: corrupt, named.
        assert!(
            matches!(row.get::<String>(0), Err(StoreError::Corrupt(m)) if m.contains("column 0"))
        );
        assert!(Row(vec![Value::Int(-1)]).get::<u32>(0).is_err());
        assert!(row.get::<i64>(9).is_err());
        assert!(row.get::<Uuid>(2).is_err());
    }
}
