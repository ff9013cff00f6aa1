//! The deletion sweep: a key whose deletion date has passed is destroyed in the token
//! (C_DestroyObject, checked with pkcs11-tool), becomes DESTROYED, refuses to sign, and
//! the destruction is audited under the principal "hsmd". A key still inside its window
//! is left alone.
//!
//! Nobody waits seven days: the daemon runs in this process on a manual clock
//! ([`InProcess`]), the test moves the clock past the deletion date and the sweep does
//! the rest. An in-process daemon is alone in its test binary: this file holds one test.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    InProcess, Instance,
    algorithms::{create_key, sign},
    audit::check_chain,
    expect_ok,
    inprocess::DAY,
    keys::{describe_key, state_of},
    status::key_method,
    v1::{
        GetPublicKeyRequest, KeySpec, KeyState, ListKeysRequest, MessageType,
        ScheduleKeyDeletionRequest, SigningAlgorithm, VerifyAuditLogRequest,
    },
};
use tonic::Code;

const SWEEP_TIMEOUT: Duration = Duration::from_secs(90);

async fn state(d: &Instance, key_id: &str) -> (KeyState, hsmd_e2e::v1::KeyMetadata) {
    let meta = describe_key(d, key_id).await;
    (state_of(&meta), meta)
}

fn token_labels(d: &Instance) -> Vec<String> {
    d.token_objects(true)
        .iter()
        .map(|o| o.field("label").to_owned())
        .collect()
}

async fn schedule_deletion(d: &Instance, key_id: &str) {
    let req = ScheduleKeyDeletionRequest {
        key_id: key_id.to_owned(),
        pending_window_days: 7,
    };
    expect_ok(
        d.keys().schedule_key_deletion(req).await,
        "ScheduleKeyDeletion",
    );
}

/// Checks, reading the store (never writing it), that `key_id`'s deletion date is kept
/// as unix seconds seven days after the daemon's now.
fn assert_deletion_date_stored(d: &InProcess, key_id: &str) {
    let db = rusqlite::Connection::open_with_flags(
        d.data_dir().join("hsmd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open hsmd.db");
    let mut columns = Vec::new();
    let mut stmt = db.prepare("PRAGMA table_info(keys)").expect("table_info");
    let mut rows = stmt.query([]).expect("query table_info");
    while let Some(row) = rows.next().expect("row") {
        columns.push(row.get::<_, String>(1).expect("column name"));
    }
    for needed in ["key_id", "deletion_time"] {
        assert!(
            columns.iter().any(|c| c == needed),
            "table keys has no column {needed}: {columns:?}"
        );
    }
    let stored: i64 = db
        .query_row(
            "SELECT deletion_time FROM keys WHERE key_id = ?1",
            [key_id],
            |r| r.get(0),
        )
        .expect("deletion_time of the key (INTEGER unix seconds)");
    let want = d.now() + 7 * DAY;
    assert!(
        (stored - want).abs() < 3_600,
        "stored deletion_time {stored} is not unix seconds 7 days ahead ({want})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_deletion_destroys_the_key_in_the_token() {
    let d = InProcess::start().await;
    let mut keys = d.keys();
    let doomed = create_key(&mut keys, KeySpec::EcP256, "doomed").await;
    let spared = create_key(&mut keys, KeySpec::EcP256, "").await;
    schedule_deletion(&d, &doomed).await;
    assert_deletion_date_stored(&d, &doomed);
    // The spared key's window opens a day later: still open when the doomed one's ends.
    d.clock().advance(DAY);
    schedule_deletion(&d, &spared).await;
    let labels = token_labels(&d);
    for key_id in [&doomed, &spared] {
        assert_eq!(
            labels.iter().filter(|l| l == &key_id).count(),
            2,
            "{key_id}: private and public object in the token"
        );
    }

    d.clock().advance(6 * DAY + 60);

    let deadline = Instant::now() + SWEEP_TIMEOUT;
    let meta = loop {
        let (st, meta) = state(&d, &doomed).await;
        if st == KeyState::Destroyed {
            break meta;
        }
        assert!(
            Instant::now() < deadline,
            "key still {st:?} {SWEEP_TIMEOUT:?} after its deletion date passed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        meta.destroy_time.is_some(),
        "DESTROYED key without destroy_time: {meta:?}"
    );
    assert_eq!(
        state(&d, &spared).await.0,
        KeyState::PendingDeletion,
        "a key inside its window was touched"
    );

    let labels = token_labels(&d);
    assert!(
        !labels.contains(&doomed),
        "objects of the destroyed key are still in the token: {labels:?}"
    );
    assert_eq!(
        labels.iter().filter(|l| *l == &spared).count(),
        2,
        "objects of the spared key are gone: {labels:?}"
    );

    let mut keys = d.keys();
    let r = sign(
        &mut keys,
        &doomed,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"m",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::FailedPrecondition,
        "KEY_DESTROYED",
    );
    let r = keys
        .get_public_key(GetPublicKeyRequest {
            key_id: doomed.clone(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("GetPublicKey"),
        Code::FailedPrecondition,
        "KEY_DESTROYED",
    );
    let (list, _) = expect_ok(keys.list_keys(ListKeysRequest::default()).await, "ListKeys");
    assert!(
        list.keys.iter().all(|k| k.key_id != doomed),
        "ListKeys lists a DESTROYED key by default"
    );
    let req = ListKeysRequest {
        state: KeyState::Destroyed as i32,
        ..Default::default()
    };
    let (list, _) = expect_ok(keys.list_keys(req).await, "ListKeys DESTROYED");
    assert!(
        list.keys.iter().any(|k| k.key_id == doomed),
        "ListKeys(state=DESTROYED) misses the key"
    );

    let lines = d.audit_lines();
    let by_hsmd: Vec<_> = lines
        .iter()
        .filter(|l| l.str("principal") == "hsmd" && l.str("key_id") == doomed)
        .collect();
    assert!(
        by_hsmd.iter().any(|l| l.str("outcome") == "ok"),
        "no audit record of the destruction by principal \"hsmd\":\n{}",
        lines
            .iter()
            .map(|l| l.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines
            .iter()
            .all(|l| l.str("key_id") != spared || l.str("principal") != "hsmd")
    );
    check_chain(&lines).unwrap_or_else(|e| panic!("hash chain broken: {e}"));
    let (resp, _) = expect_ok(
        d.audit().verify_audit_log(VerifyAuditLogRequest {}).await,
        "VerifyAuditLog",
    );
    assert!(resp.ok, "{resp:?}");
}
