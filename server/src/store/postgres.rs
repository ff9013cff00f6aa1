//! The PostgreSQL engine (issue 17): the store of a cluster of replicas.
//!
//! tokio-postgres with a deadpool pool, on a small runtime of the store's own: the
//! store's callers are synchronous (the blocking pool), so each statement is handed to
//! that runtime and waited for, never `block_on` from inside some other runtime. Every
//! statement has a deadline; a server that is down or does not answer is
//! [`StoreError::Unavailable`] (the caller's UNAVAILABLE), never an answer without
//! metadata, and the pool reconnects once it is back.
//!
//! Start-up runs the versioned migrations under an advisory lock, so replicas starting
//! together migrate once. Triggers `NOTIFY hsmd_store` on every change to the tables the
//! key cache reads; [`Watch`] listens on a connection of its own and moves the cache's
//! version (see `cache.rs` for the bound when it cannot).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{AsyncMessage, NoTls};

use super::StoreError;
use super::sql::{Db, Dialect, Row, Value, Violation};

/// How long one statement (or taking a pooled connection) may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// The notification channel the triggers signal.
const CHANNEL: &str = "hsmd_store";

/// The advisory lock key the migrations run under ("hsmd" in ASCII).
const MIGRATION_LOCK: i64 = 0x6873_6d64;

/// The schema's versions, applied in order, each once, each in one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_rate_buckets.sql"),
    ),
];

/// `[store]` for PostgreSQL.
#[derive(Clone)]
pub(crate) struct PgConfig {
    /// `postgres://user@host:port/db?sslmode=...`.
    pub(crate) url: String,
    /// From `password_file`, else `PGPASSWORD`, else the URL's.
    pub(crate) password: Option<SecretString>,
    /// PEM roots to trust for TLS (`sslmode=require` or `prefer`); none: no TLS.
    pub(crate) ca_file: Option<PathBuf>,
    /// Most connections this replica holds.
    pub(crate) pool_size: usize,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &PgConfig::redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgConfig {
    /// `url` for logs and errors: a password in it (`postgres://user:PASSWORD@host`, or
    /// `password=...`) is masked.
    pub(crate) fn redacted(url: &str) -> String {
        let mut out = url.to_string();
        // As the driver reads it: the credentials run to the first '@'.
        if let Some(scheme) = out.find("://") {
            let rest = scheme + 3;
            if let Some(at) = out[rest..].find('@').map(|i| rest + i)
                && let Some(colon) = out[rest..at].find(':').map(|i| rest + i)
            {
                out.replace_range(colon + 1..at, "***");
            }
        }
        if let Some(i) = out.find("password=") {
            let start = i + "password=".len();
            let end = out[start..]
                .find(['&', ' '])
                .map_or(out.len(), |j| start + j);
            out.replace_range(start..end, "***");
        }
        out
    }

    /// Whether the driver understands `url` (hosts, port, options, `sslmode`).
    pub(crate) fn check_url(url: &str) -> Result<(), String> {
        url.parse::<tokio_postgres::Config>()
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Maps the driver's errors: a broken constraint is a [`Violation`]; a server that
/// cannot be reached, went away or is shutting down is `Unavailable`.
impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(code) = e.code() else {
            return StoreError::Unavailable(format!("PostgreSQL: {e}"));
        };
        if *code == SqlState::UNIQUE_VIOLATION {
            StoreError::Violation(Violation::Unique)
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            StoreError::Violation(Violation::ForeignKey)
        } else if *code == SqlState::CHECK_VIOLATION || *code == SqlState::NOT_NULL_VIOLATION {
            StoreError::Violation(Violation::Check)
        } else if code.code().starts_with("08")
            || code.code().starts_with("57P")
            || code.code().starts_with("53")
        {
            StoreError::Unavailable(format!("PostgreSQL: {e}"))
        } else {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            StoreError::Engine(format!("PostgreSQL {}: {detail}", code.code()))
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer bound to a {ty} parameter").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn read(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
            ref t => {
                return Err(StoreError::Corrupt(format!(
                    "column {} is a {t}",
                    col.name()
                )));
            }
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

/// `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// The TLS the connections use.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    fn from_config(cfg: &PgConfig) -> Result<Tls, StoreError> {
        let Some(path) = &cfg.ca_file else {
            return Ok(Tls::None);
        };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::Engine(format!("store.ca_file {}: {e}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(StoreError::Engine(format!(
                "store.ca_file {} holds no certificate",
                path.display()
            )));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Engine(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
            config,
        )))
    }
}

/// Whether the cache may trust its version: the listening connection is up, and
/// the version moved on every notification it got.
pub(super) struct Watch {
    version: AtomicI64,
    listening: AtomicBool,
}

impl Watch {
    /// The version, if changes are being heard; `None`: read everything afresh.
    pub(super) fn version(&self) -> Option<i64> {
        self.listening
            .load(Ordering::Acquire)
            .then(|| self.version.load(Ordering::Acquire))
    }

    /// Something changed (here, or heard from another replica).
    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// The engine: the pool, the runtime its connections live on, and the watch.
pub(super) struct Engine {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: Tls,
    rt: Option<tokio::runtime::Runtime>,
    pub(super) watch: Arc<Watch>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime's own thread may not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Engine {
    /// Connects, migrates (under the advisory lock) and starts listening.
    pub(super) fn open(cfg: &PgConfig) -> Result<Engine, StoreError> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e| StoreError::Engine(format!("store.url: {e}")))?;
        if let Some(p) = &cfg.password {
            pg.password(p.expose_secret());
        }
        pg.connect_timeout(DEADLINE);
        pg.application_name("hsmd");
        // Dead peers are found in seconds, not TCP's hours: a replica that lost its
        // network loses its session (and its advisory locks and row locks) soon.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        // The server gives up where hsmd does: a statement hsmd stopped waiting for
        // does not commit later, and no session sits inside a transaction. The
        // server's NOTICEs ("already exists, skipping") are not news.
        let ours = "-c statement_timeout=9000 -c lock_timeout=9000 \
                    -c idle_in_transaction_session_timeout=15000 \
                    -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
                    -c tcp_keepalives_count=3 -c client_min_messages=warning";
        let options = match pg.get_options() {
            Some(theirs) => format!("{ours} {theirs}"),
            None => ours.to_string(),
        };
        pg.options(&options);
        let tls = Tls::from_config(cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hsmd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Engine(format!("store runtime: {e}")))?;
        let manager = {
            let mc = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            match &tls {
                Tls::None => Manager::from_config(pg.clone(), NoTls, mc),
                Tls::Rustls(t) => Manager::from_config(pg.clone(), t.clone(), mc),
            }
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(DEADLINE))
            .create_timeout(Some(DEADLINE))
            .recycle_timeout(Some(DEADLINE))
            .build()
            .map_err(|e| StoreError::Engine(format!("store pool: {e}")))?;
        let watch = Arc::new(Watch {
            version: AtomicI64::new(0),
            listening: AtomicBool::new(false),
        });
        let engine = Engine {
            pool,
            pg: pg.clone(),
            tls: tls.clone(),
            rt: Some(rt),
            watch: watch.clone(),
        };
        engine.run({
            let pool = engine.pool.clone();
            async move { migrate(&pool).await }
        })?;
        engine.runtime().spawn(listen(pg, tls, watch));
        Ok(engine)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    /// Runs `f` on the engine's runtime and waits for it, at most [`DEADLINE`].
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let r = match tokio::time::timeout(DEADLINE, f).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s",
                    DEADLINE.as_secs()
                ))),
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the store's runtime stopped".into()))?
    }

    /// A pooled connection.
    pub(super) fn conn(self: &Arc<Self>) -> Result<PgConn, StoreError> {
        let pool = self.pool.clone();
        let client = self.run(async move {
            pool.get()
                .await
                .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))
        })?;
        Ok(PgConn {
            client: Some(Arc::new(client)),
            engine: self.clone(),
            in_tx: false,
            unsure: false,
            wrote_cached: false,
        })
    }

    /// Holds the advisory lock `key` while the returned guard lives, if no other
    /// session holds it: work that one replica at a time must do (the sweeps). The lock
    /// is taken on a connection of its own, outside the pool, so that it goes when the
    /// guard (or the replica holding it) goes, with the connection.
    pub(super) fn try_lock(self: &Arc<Self>, key: i64) -> Result<Option<PgLock>, StoreError> {
        self.advisory(key, "SELECT pg_try_advisory_lock($1)")
    }

    /// As [`Engine::try_lock`], waiting for the replica that holds it to let go (at
    /// most the statement deadline, then `Unavailable`).
    pub(super) fn lock(self: &Arc<Self>, key: i64) -> Result<PgLock, StoreError> {
        self.advisory(
            key,
            "SELECT true FROM (SELECT pg_advisory_lock($1)) AS held",
        )?
        .ok_or_else(|| StoreError::Unavailable("advisory lock not granted".into()))
    }

    /// Runs `sql` (true: the lock is held) for `key` on a connection of its own.
    fn advisory(
        self: &Arc<Self>,
        key: i64,
        sql: &'static str,
    ) -> Result<Option<PgLock>, StoreError> {
        let (pg, tls) = (self.pg.clone(), self.tls.clone());
        let client = self.run(async move {
            let client = match &tls {
                Tls::None => connect(&pg, NoTls).await?,
                Tls::Rustls(t) => connect(&pg, t.clone()).await?,
            };
            let row = client.query_one(sql, &[&key]).await?;
            Ok(row.try_get::<_, bool>(0)?.then_some(client))
        })?;
        Ok(client.map(|c| PgLock {
            _client: c,
            _engine: self.clone(),
        }))
    }
}

/// Connects outside the pool; the connection is driven on the current runtime until
/// its client is dropped.
async fn connect<T>(
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = pg.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// An advisory lock, held while its connection is open.
pub(crate) struct PgLock {
    _client: tokio_postgres::Client,
    /// The runtime that drives the connection outlives it.
    _engine: Arc<Engine>,
}

/// A statement being prepared on a connection, with its arguments.
type Prepared = std::pin::Pin<
    Box<
        dyn Future<
                Output = Result<(Arc<Object>, tokio_postgres::Statement, Vec<Value>), StoreError>,
            > + Send,
    >,
>;

/// One pooled connection, used by one store call.
pub(super) struct PgConn {
    /// Taken only when the connection is dropped.
    client: Option<Arc<Object>>,
    engine: Arc<Engine>,
    in_tx: bool,
    /// A transaction's end failed (or never came), or a statement's answer: the
    /// connection may still be busy or inside a transaction, so it must not go back to
    /// the pool.
    unsure: bool,
    /// The open transaction wrote what the key cache holds.
    wrote_cached: bool,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if (self.in_tx || self.unsure)
            && let Some(client) = self.client.take()
            && let Ok(object) = Arc::try_unwrap(client)
        {
            // Out of the pool: closing the connection ends whatever transaction it
            // was in. (A statement still in flight holds the other reference; its
            // error closes nothing, but it ends within the deadline.)
            drop(Object::take(object));
        }
    }
}

impl PgConn {
    fn client(&self) -> Result<Arc<Object>, StoreError> {
        self.client
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the connection was closed".into()))
    }

    fn statement(&mut self, sql: &str, args: &[Value]) -> Result<Prepared, StoreError> {
        let c = self.client()?;
        let sql = dollars(sql);
        let args = args.to_vec();
        Ok(Box::pin(async move {
            let st = c.prepare_cached(&sql).await?;
            Ok((c, st, args))
        }))
    }

    /// `r` of a statement; one that could not be seen through (a deadline, a lost
    /// connection) leaves the connection in doubt, and it is not pooled again.
    fn settled<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(r, Err(StoreError::Unavailable(_))) {
            self.unsure = true;
        }
        r
    }

    /// `sql` wrote: if it wrote what the key cache holds, forget the cache here at
    /// once (at the commit, inside a transaction), without waiting for the
    /// notification. Other writes (rate buckets, the event queue) leave it be.
    fn changed_by(&mut self, sql: &str) {
        let lower = sql.to_ascii_lowercase();
        let cached = [
            "keys ",
            "aliases ",
            "key_versions ",
            "key_rotation ",
            "key_material ",
        ]
        .iter()
        .any(|t| lower.contains(t));
        if !cached {
            return;
        }
        if self.in_tx {
            self.wrote_cached = true;
        } else {
            self.engine.watch.bump();
        }
    }
}

fn refs(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Db for PgConn {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let prepared = self.statement(sql, args)?;
        let n = self.engine.run(async move {
            let (c, st, args) = prepared.await?;
            Ok(c.execute(&st, &refs(&args)).await?)
        });
        let n = self.settled(n)?;
        self.changed_by(sql);
        usize::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} rows changed")))
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let head = sql.trim_start().get(..6).unwrap_or_default();
        let writes = ["INSERT", "UPDATE", "DELETE"]
            .iter()
            .any(|w| head.eq_ignore_ascii_case(w));
        let prepared = self.statement(sql, args)?;
        let rows = self.engine.run(async move {
            let (c, st, args) = prepared.await?;
            let rows = c.query(&st, &refs(&args)).await?;
            rows.iter().map(read).collect::<Result<Vec<_>, _>>()
        });
        let rows = self.settled(rows)?;
        if writes {
            self.changed_by(sql);
        }
        Ok(rows)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let c = self.client()?;
        let text = sql.to_string();
        let r = self
            .engine
            .run(async move { Ok(c.batch_execute(&text).await?) });
        let r = self.settled(r);
        match sql {
            // A BEGIN that failed may still have begun (a deadline, not an error).
            "BEGIN" => self.in_tx = true,
            "COMMIT" | "ROLLBACK" => {
                self.in_tx = false;
                self.unsure |= r.is_err();
                if std::mem::take(&mut self.wrote_cached) {
                    self.engine.watch.bump();
                }
            }
            _ => {}
        }
        r
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// Applies the migrations not yet applied, under the advisory lock.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let c = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))?;
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let done: i64 = c
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await?
            .try_get(0)?;
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if done > newest {
            return Err(StoreError::Engine(format!(
                "the PostgreSQL schema is at version {done}, newer than this hsmd \
                 knows ({newest}): upgrade hsmd"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > done) {
            c.batch_execute(&format!(
                "BEGIN;\n{sql}\nINSERT INTO schema_migrations (version) VALUES ({version});\nCOMMIT;"
            ))
            .await?;
            tracing::info!(version, "PostgreSQL schema migrated");
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

/// Listens for change notifications on a connection of its own, for as long as the
/// runtime lives: each moves the version. While it is not listening (not yet, lost,
/// reconnecting) the watch says so, and the cache keeps nothing.
async fn listen(pg: tokio_postgres::Config, tls: Tls, watch: Arc<Watch>) {
    loop {
        let heard = match &tls {
            Tls::None => listen_once(&pg, NoTls, &watch).await,
            Tls::Rustls(t) => listen_once(&pg, t.clone(), &watch).await,
        };
        watch.listening.store(false, Ordering::Release);
        watch.bump();
        if let Err(e) = heard {
            tracing::warn!(error = %e, "store change notifications lost; reading every key record afresh until they are back");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often the listening connection is checked, and how long a check may take.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

async fn listen_once<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    watch: &Watch,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = pg.connect(tls).await?;
    let messages = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => watch.bump(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    };
    let heartbeat = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Anything changed while not listening is forgotten from here on.
        watch.bump();
        watch.listening.store(true, Ordering::Release);
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            match tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    };
    tokio::select! {
        r = messages => r,
        r = heartbeat => r,
    }
}

#[cfg(test)]
mod tests {
    use super::dollars;

    #[test]
    fn passwords_in_urls_are_masked() {
        use super::PgConfig;
        assert_eq!(
            PgConfig::redacted("postgres://hsmd:s3cret@db:5432/hsmd?sslmode=require"),
            "postgres://hsmd:***@db:5432/hsmd?sslmode=require"
        );
        assert_eq!(
            PgConfig::redacted("postgres://hsmd@db/hsmd?password=s3cret&sslmode=require"),
            "postgres://hsmd@db/hsmd?password=***&sslmode=require"
        );
        assert_eq!(
            PgConfig::redacted("postgres://hsmd@db:5432/hsmd"),
            "postgres://hsmd@db:5432/hsmd"
        );
        assert_eq!(
            PgConfig::redacted("postgres://hsmd:pa/ss@db/hsmd"),
            "postgres://hsmd:***@db/hsmd"
        );
        let cfg = PgConfig {
            url: "postgres://hsmd:s3cret@db/hsmd".into(),
            password: Some("other".to_string().into()),
            ca_file: None,
            pool_size: 2,
        };
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("other"),
            "{debug}"
        );
    }

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollars("SELECT a FROM t WHERE b = ?1 AND c LIKE ?12 ESCAPE '\\' AND d = '?3'"),
            "SELECT a FROM t WHERE b = $1 AND c LIKE $12 ESCAPE '\\' AND d = '?3'"
        );
    }
}
