//! Imported material expires at its valid_to: the key works until then; afterwards the
//! sweep destroys the material in the token (audited as hsmd/ExpireKeyMaterial), the key
//! returns to PENDING_IMPORT and is refused at once.
//!
//! Nobody waits for valid_to: the daemon runs in this process on a manual clock
//! ([`InProcess`]) and the test moves the clock past it. An in-process daemon is alone
//! in its test binary: this file holds one test.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    InProcess, Need,
    crypt::encrypt,
    expect_ok,
    import::{create_external, openssl_rand, openssl_wrap, parameters},
    keys::describe_key,
    status::key_method,
    v1::{
        EncryptionAlgorithm, ImportKeyMaterialRequest, KeySpec, KeyState, KeyUsage,
        WrappingAlgorithm,
    },
};
use tonic::Code;

/// How long the material is valid, in the daemon's seconds.
const VALID_FOR: i64 = 3_600;

#[tokio::test(flavor = "multi_thread")]
async fn material_expires_at_valid_to() {
    let d = InProcess::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    openssl_rand(&dir, "aes", 32);
    let alg = WrappingAlgorithm::RsaesOaepSha1;
    let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &dir.join("aes"));
    let valid_to = d.now() + VALID_FOR;
    let (r, _) = expect_ok(
        keys.import_key_material(ImportKeyMaterialRequest {
            key_id: key.clone(),
            import_token: p.import_token.clone(),
            encrypted_key_material: wrapped,
            valid_to: Some(prost_types::Timestamp {
                seconds: valid_to,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await,
        "ImportKeyMaterial with valid_to",
    );
    assert_eq!(
        r.key.expect("key").valid_to.map(|t| t.seconds),
        Some(valid_to)
    );
    let r = encrypt(
        &mut keys,
        &key,
        EncryptionAlgorithm::SymmetricDefault,
        b"x",
        b"",
    )
    .await;
    expect_ok(r, "Encrypt before valid_to");

    d.clock().advance(VALID_FOR + 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let meta = describe_key(&d, &key).await;
        if meta.state == KeyState::PendingImport as i32 {
            assert!(meta.valid_to.is_none() && meta.import_time.is_none());
            break;
        }
        assert!(Instant::now() < deadline, "material not expired: {meta:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        d.objects_of(&key).is_empty(),
        "expired material destroyed in the token"
    );
    let expired: Vec<_> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l.str("method") == "hsmd/ExpireKeyMaterial" && l.str("key_id") == key)
        .collect();
    assert_eq!(expired.len(), 1, "one audit record of the expiry");
    assert_eq!(expired[0].str("outcome"), "ok");
    let r = encrypt(
        &mut keys,
        &key,
        EncryptionAlgorithm::SymmetricDefault,
        b"x",
        b"",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Encrypt"),
        Code::FailedPrecondition,
        "KEY_PENDING_IMPORT",
    );
}
