//! Store tests, each run on both engines: a real SQLite file in a temporary folder, and
//! a database of its own on a real PostgreSQL server (one per test binary, started by
//! the first test that needs it; `scripts/test` installs `postgresql`).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::local_postgres::LocalPostgres;
use super::*;
use crate::domain::spec::{KeyOrigin, KeySpec};

/// The test binary's PostgreSQL server, started by the first test that needs it.
fn postgres() -> &'static LocalPostgres {
    static PG: OnceLock<LocalPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        super::local_postgres::start_for_process("hsmd-store-pg")
            .unwrap_or_else(|e| panic!("{e:#}"))
    })
}

/// A database of one engine, for one test.
pub(super) struct TestDb {
    pub(super) engine: &'static str,
    cfg: StoreConfig,
    _dir: tempfile::TempDir,
}

impl TestDb {
    /// A store on it, as node `node` (several: replicas of one cluster).
    pub(super) fn open(&self, node: &str) -> Store {
        Store::connect(&self.cfg, node)
            .unwrap_or_else(|e| panic!("{}: open store: {e}", self.engine))
    }

    /// How long a change made through one store may take to be seen through another:
    /// at once on one SQLite file; PostgreSQL's notification travels first.
    pub(super) fn settle(&self, check: impl Fn() -> bool) {
        let deadline = Instant::now() + cache::MAX_AGE + Duration::from_secs(2);
        while !check() {
            assert!(
                self.engine == "postgres" && Instant::now() < deadline,
                "{}: the change was not seen in time",
                self.engine
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One fresh database of each engine.
pub(super) fn databases() -> Vec<TestDb> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite = StoreConfig::Sqlite(sqlite_dir.path().join("m.db"));
    let pg = postgres();
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
    pg.create_database(&name)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vec![
        TestDb {
            engine: "sqlite",
            cfg: sqlite,
            _dir: sqlite_dir,
        },
        TestDb {
            engine: "postgres",
            cfg: StoreConfig::Postgres(PgConfig {
                url: pg.url(&name),
                password: Some(pg.password().to_string().into()),
                ca_file: None,
                pool_size: 4,
            }),
            _dir: tempfile::tempdir().unwrap(),
        },
    ]
}

fn key(t: i64) -> KeyRecord {
    KeyRecord {
        id: Uuid::new_v4(),
        spec: KeySpec::EcP256,
        usage: KeyUsage::SignVerify,
        origin: KeyOrigin::Hsm,
        state: KeyState::Enabled,
        description: "d".into(),
        tags: BTreeMap::from([("team".into(), "pay".into())]),
        created_by: "p".into(),
        create_time: t,
        deletion_time: None,
        destroy_time: None,
        public_key_der: Some(vec![1, 2, 3]),
        import_time: None,
        valid_to: None,
        key_check_value: None,
        aliases: vec![],
        versions: vec![],
        rotation: None,
    }
}

#[test]
fn keys_aliases_and_paging() {
    for db in databases() {
        keys_aliases_and_paging_on(&db.open("a"));
    }
}

fn keys_aliases_and_paging_on(store: &Store) {
    let a = key(100);
    let b = key(200);
    store.insert_key(&a, Some("alias/a"), Some("tok")).unwrap();
    store.insert_key(&b, None, None).unwrap();
    assert!(matches!(
        store.insert_key(&key(300), Some("alias/a"), None),
        Err(StoreError::AliasExists)
    ));
    // The failed insert left no key behind.
    let all = store
        .list_keys(&KeyFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        all.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![b.id, a.id]
    );
    let got = store.get_key(a.id).unwrap().unwrap();
    assert_eq!(got.aliases, vec!["alias/a".to_string()]);
    assert_eq!(got.tags, a.tags);
    assert_eq!(store.resolve_alias("alias/a").unwrap(), Some(a.id));
    assert_eq!(
        store.key_by_idempotency("p", "tok").unwrap().map(|k| k.id),
        Some(a.id)
    );
    let page = store
        .list_keys(&KeyFilter {
            limit: 1,
            after: Some((200, b.id.to_string())),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, a.id);
    let by_alias = store
        .list_keys(&KeyFilter {
            limit: 10,
            alias_prefix: Some("alias/".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_alias.len(), 1);
    store.update_alias("alias/a", b.id, 300).unwrap();
    assert_eq!(store.resolve_alias("alias/a").unwrap(), Some(b.id));
    assert!(matches!(
        store.create_alias("alias/x", Uuid::new_v4(), 1),
        Err(StoreError::KeyNotFound)
    ));
    assert_eq!(store.delete_alias("alias/a").unwrap(), b.id);
    assert!(matches!(
        store.delete_alias("alias/a"),
        Err(StoreError::AliasNotFound)
    ));
}

#[test]
fn state_changes_are_compare_and_set() {
    for db in databases() {
        state_changes_are_compare_and_set_on(&db.open("a"));
    }
}

fn state_changes_are_compare_and_set_on(store: &Store) {
    let a = key(1);
    store.insert_key(&a, None, None).unwrap();
    store
        .set_state(
            a.id,
            KeyState::Enabled,
            KeyState::PendingDeletion,
            Some(50),
            None,
        )
        .unwrap();
    assert!(matches!(
        store.set_state(a.id, KeyState::Enabled, KeyState::Disabled, None, None),
        Err(StoreError::Conflict)
    ));
    assert!(store.due_for_deletion(49).unwrap().is_empty());
    assert_eq!(store.due_for_deletion(50).unwrap(), vec![a.id]);
    store
        .set_state(
            a.id,
            KeyState::PendingDeletion,
            KeyState::Destroyed,
            Some(50),
            Some(60),
        )
        .unwrap();
    assert!(store.keys_with_material().unwrap().is_empty());
    assert!(
        store
            .list_keys(&KeyFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
}

/// Remembered records follow every change: made by this store, and made by another
/// replica on the same database (SQLite: the cache watches the WAL-index header, not our
/// writes; PostgreSQL: the notifications, within the cache's bound).
#[test]
fn remembered_records_follow_changes_from_any_replica() {
    for db in databases() {
        let store = db.open("a");
        let replica = db.open("b");
        let a = key(1);
        store.insert_key(&a, Some("alias/a"), None).unwrap();
        let state_of_a = || store.get_key(a.id).unwrap().unwrap().state;
        // Read twice: the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(state_of_a(), KeyState::Enabled);
            assert_eq!(store.resolve_alias("alias/a").unwrap(), Some(a.id));
        }
        // This store's own change: seen at once, on either engine.
        store
            .set_state(a.id, KeyState::Enabled, KeyState::Disabled, None, None)
            .unwrap();
        assert_eq!(state_of_a(), KeyState::Disabled, "{}", db.engine);
        replica
            .set_state(a.id, KeyState::Disabled, KeyState::Enabled, None, None)
            .unwrap();
        db.settle(|| state_of_a() == KeyState::Enabled);
        let b = key(2);
        replica.insert_key(&b, None, None).unwrap();
        replica.update_alias("alias/a", b.id, 3).unwrap();
        db.settle(|| store.resolve_alias("alias/a").unwrap() == Some(b.id));
        assert_eq!(
            store.get_key(a.id).unwrap().unwrap().aliases,
            Vec::<String>::new()
        );
        replica.delete_alias("alias/a").unwrap();
        db.settle(|| store.resolve_alias("alias/a").unwrap().is_none());
        replica.delete_key(b.id).unwrap();
        db.settle(|| store.get_key(b.id).unwrap().is_none());
    }
}

/// Replicas starting together on an empty database: both come up, the schema is
/// migrated once (the advisory lock), and a second start migrates nothing.
#[test]
fn replicas_starting_together_migrate_once() {
    let db = databases().pop().unwrap();
    let stores: Vec<Store> = std::thread::scope(|s| {
        let db = &db;
        let starts: Vec<_> = (0..3)
            .map(|i| s.spawn(move || db.open(&format!("n{i}"))))
            .collect();
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let migrations = |s: &Store| {
        s.with(|c| c.column::<i64>("SELECT version FROM schema_migrations", &[]))
            .unwrap()
    };
    assert_eq!(migrations(&stores[0]), vec![1, 2]);
    drop(db.open("n3"));
    assert_eq!(migrations(&stores[2]), vec![1, 2]);
}

/// Work for one replica at a time: the second is refused while the first holds it,
/// and gets it once the first lets go. (SQLite has one node: never refused.)
#[test]
fn exclusive_work_is_one_replica_at_a_time() {
    for db in databases() {
        let (a, b) = (db.open("a"), db.open("b"));
        let held = a.exclusive("sweep").unwrap().expect("first");
        let second = b.exclusive("sweep").unwrap();
        assert_eq!(second.is_none(), db.engine == "postgres", "{}", db.engine);
        assert!(b.exclusive("other work").unwrap().is_some());
        drop((held, second));
        assert!(b.exclusive("sweep").unwrap().is_some(), "{}", db.engine);
        // Waiting for it: granted once the holder lets go.
        let held = a.exclusive("audit-key").unwrap().expect("free");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let got = b.exclusive_wait("audit-key").unwrap();
                (Instant::now(), got)
            });
            std::thread::sleep(Duration::from_millis(300));
            let released = Instant::now();
            drop(held);
            let (granted, _) = waiter.join().unwrap();
            if db.engine == "postgres" {
                assert!(granted >= released, "b waited for a");
            }
        });
    }
}

/// Races between replicas end in one consistent state: of two replicas scheduling
/// one key's deletion (or cancelling it) at once, one wins and one is told Conflict;
/// of two issuing import tokens for one key at once, only the newest is live.
#[test]
fn racing_replicas_never_both_win() {
    for db in databases() {
        let (a, b) = (db.open("a"), db.open("b"));
        for round in 0..10 {
            let k = key(round);
            a.insert_key(&k, None, None).unwrap();
            let go = |s: &Store, from, to| s.set_state(k.id, from, to, Some(9), None).is_ok();
            let wins = std::thread::scope(|sc| {
                let x = sc.spawn(|| go(&a, KeyState::Enabled, KeyState::PendingDeletion));
                let y = sc.spawn(|| go(&b, KeyState::Enabled, KeyState::PendingDeletion));
                usize::from(x.join().unwrap()) + usize::from(y.join().unwrap())
            });
            assert_eq!(wins, 1, "{}: schedule", db.engine);
            let wins = std::thread::scope(|sc| {
                let x = sc.spawn(|| go(&a, KeyState::PendingDeletion, KeyState::Enabled));
                let y = sc.spawn(|| go(&b, KeyState::PendingDeletion, KeyState::Enabled));
                usize::from(x.join().unwrap()) + usize::from(y.join().unwrap())
            });
            assert_eq!(wins, 1, "{}: cancel", db.engine);
            std::thread::scope(|sc| {
                for s in [&a, &b] {
                    sc.spawn(move || {
                        for t in 0..5 {
                            s.insert_import_token(&ImportToken {
                                id: Uuid::new_v4(),
                                key_id: k.id,
                                algorithm: "RSAES_OAEP_SHA_256".into(),
                                wrapping_spec: "RSA_2048".into(),
                                modulus_len: 256,
                                create_time: t,
                                expire_time: 1_000,
                                superseded_by: None,
                            })
                            .unwrap();
                        }
                    });
                }
            });
            let live = a
                .with(|c| {
                    c.column::<Uuid>(
                        "SELECT token_id FROM import_tokens WHERE key_id = ?1 AND superseded_by IS NULL",
                        args![k.id],
                    )
                })
                .unwrap();
            assert_eq!(live.len(), 1, "{}: newest only", db.engine);
        }
    }
}
