//! PostgreSQL going away under a replica (issue 17): while the server is down every
//! call that needs metadata fails with UNAVAILABLE (none is answered from what the
//! replica remembered), and once it is back the replica serves again without being
//! restarted. This binary stops its server, so it has one of its own.

use std::time::{Duration, Instant};

use hsmd_e2e::cluster::Cluster;
use hsmd_e2e::postgres::Postgres;
use hsmd_e2e::v1::{CreateKeyRequest, KeySpec, KeyUsage, SignRequest, SigningAlgorithm};
use hsmd_e2e::{expect_ok, reason_of};
use tonic::Code;

fn sign(key: &str) -> SignRequest {
    SignRequest {
        key_id: key.into(),
        algorithm: SigningAlgorithm::EcdsaSha256 as i32,
        message: b"outage".to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_fail_unavailable_while_postgres_is_down_and_recover_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(&dir.path().join("pg"));
    let mut c = Cluster::new(&pg);
    c.start("a").await;
    let mut keys = c.node("a").keys();
    let key = hsmd_e2e::keys::create(
        &mut keys,
        CreateKeyRequest {
            spec: KeySpec::EcP256 as i32,
            usage: KeyUsage::SignVerify as i32,
            ..Default::default()
        },
        "outage",
    )
    .await;
    // Signed twice: the key's record is in the replica's cache.
    for _ in 0..2 {
        expect_ok(keys.sign(sign(&key)).await, "Sign before the outage");
    }

    pg.stop();
    // From the moment the server is gone, no Sign is answered.
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match keys.sign(sign(&key)).await {
            Ok(_) => panic!("Sign answered while PostgreSQL was down"),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert_eq!(reason_of(&s).as_deref(), Some("STORE_UNAVAILABLE"), "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    eprintln!("{refused} Sign calls refused while PostgreSQL was down");

    pg.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    loop {
        match keys.sign(sign(&key)).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    Instant::now() < deadline,
                    "still refused 30 s after PostgreSQL came back: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "serving again {:?} after PostgreSQL restarted",
        back.elapsed()
    );
    // The same process: it was never restarted.
    expect_ok(keys.sign(sign(&key)).await, "Sign after the outage");
}
