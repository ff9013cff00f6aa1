//! Store tests on a real SQLite file in a temporary directory.

use std::collections::BTreeMap;

use super::*;
use crate::domain::spec::{KeyOrigin, KeySpec};

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
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db")).unwrap();
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
/// replica on the same file (the cache watches SQLite's data_version, not our writes).
#[test]
fn remembered_records_follow_changes_from_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(&path).unwrap();
    let replica = Store::open(&path).unwrap();
    let a = key(1);
    store.insert_key(&a, Some("alias/a"), None).unwrap();
    let state_of_a = || store.get_key(a.id).unwrap().unwrap().state;
    // Read twice: the second answer comes from the cache.
    for _ in 0..2 {
        assert_eq!(state_of_a(), KeyState::Enabled);
        assert_eq!(store.resolve_alias("alias/a").unwrap(), Some(a.id));
    }
    store
        .set_state(a.id, KeyState::Enabled, KeyState::Disabled, None, None)
        .unwrap();
    assert_eq!(state_of_a(), KeyState::Disabled);
    replica
        .set_state(a.id, KeyState::Disabled, KeyState::Enabled, None, None)
        .unwrap();
    assert_eq!(state_of_a(), KeyState::Enabled);
    let b = key(2);
    replica.insert_key(&b, None, None).unwrap();
    replica.update_alias("alias/a", b.id, 3).unwrap();
    assert_eq!(store.resolve_alias("alias/a").unwrap(), Some(b.id));
    assert_eq!(
        store.get_key(a.id).unwrap().unwrap().aliases,
        Vec::<String>::new()
    );
    replica.delete_alias("alias/a").unwrap();
    assert_eq!(store.resolve_alias("alias/a").unwrap(), None);
    replica.delete_key(b.id).unwrap();
    assert!(store.get_key(b.id).unwrap().is_none());
}
