//! Start-up reconciliation of the token with the metadata store. A CreateKey or
//! RotateKey that hsmd dies in the middle of leaves key objects in the token and a
//! creation note in the store, but no key: the next start destroys those objects and
//! audits it (`hsmd/DestroyHalfMadeKey`). Objects without a note are reported and left
//! in place (nobody can tell whose they are), and real keys are untouched.
//!
//! The crash is staged exactly: with hsmd stopped, pkcs11-tool makes two key pairs
//! labelled like hsmd keys, and a note for one of them goes into the store file.

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    expect_ok,
    pkcs11::key_id_hex,
    v1::{KeySpec, MessageType, SigningAlgorithm},
};

/// Makes an EC key pair in the token with CKA_ID and CKA_LABEL as hsmd would.
fn make_key_pair(d: &Daemon, id: &str) {
    let out = d.pkcs11_tool(
        true,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            &key_id_hex(id),
            "--label",
            id,
        ],
    );
    assert!(
        out.success(),
        "pkcs11-tool --keypairgen\n{}",
        out.describe()
    );
    assert!(
        !d.objects_of(id).is_empty(),
        "{id}: no objects after keygen"
    );
}

#[tokio::test]
async fn half_made_keys_are_destroyed_and_strangers_reported_at_start() {
    let mut d = Daemon::start().await;
    let kept = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    d.stop().await;

    let half_made = uuid::Uuid::new_v4().to_string();
    let stranger = uuid::Uuid::new_v4().to_string();
    make_key_pair(&d, &half_made);
    make_key_pair(&d, &stranger);
    let db = rusqlite::Connection::open(d.data_dir().join("hsmd.db")).expect("open store");
    db.execute(
        "INSERT INTO creations (object_id, start_time) VALUES (?1, strftime('%s','now'))",
        [&half_made],
    )
    .expect("insert a creation note");
    drop(db);

    d.start_again().await;
    assert!(
        d.objects_of(&half_made).is_empty(),
        "the half-made key's objects survived the start: {:?}",
        d.objects_of(&half_made)
    );
    assert!(
        !d.objects_of(&stranger).is_empty(),
        "objects without a creation note were destroyed"
    );
    assert!(
        !d.objects_of(&kept).is_empty(),
        "a real key lost its objects"
    );
    let lines = d.audit_lines();
    let fixed: Vec<_> = lines
        .iter()
        .filter(|l| l.str("method") == "hsmd/DestroyHalfMadeKey")
        .collect();
    assert_eq!(fixed.len(), 1, "one audit record of the fix: {fixed:?}");
    assert_eq!(fixed[0].str("key_id"), half_made);
    assert_eq!(fixed[0].str("principal"), "hsmd");
    let log = d.stderr_text();
    assert!(
        log.contains("destroyed=1") && log.contains("orphans=1") && log.contains(&stranger),
        "the start-up report does not name what it found and fixed:\n{log}"
    );
    let db = rusqlite::Connection::open(d.data_dir().join("hsmd.db")).expect("open store");
    let notes: i64 = db
        .query_row("SELECT count(*) FROM creations", [], |r| r.get(0))
        .expect("count notes");
    assert_eq!(notes, 0, "creation notes left after reconciliation");
    expect_ok(
        sign(
            &mut d.keys(),
            &kept,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"still here",
        )
        .await,
        "Sign with the key made before",
    );
}
