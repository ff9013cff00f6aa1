//! The encryption calls under the per-key policy: a principal allowed to Encrypt and
//! Decrypt with its own keys decrypts its blobs without naming the key, but not a blob
//! of another team's key (the key the blob names is checked too), and cannot learn from
//! a forged blob whether a key exists; GenerateDataKey needs its own grant.

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon, Need,
    crypt::{create_key, decrypt, encrypt, plaintext_of},
    expect_error, expect_ok,
    status::key_method,
    v1::{
        EncryptionAlgorithm, GenerateDataKeyRequest, KeySpec, KeyUsage,
        key_service_client::KeyServiceClient,
    },
};
use tonic::Code;

const APP: &str = "spiffe://hsmd.dev/payments/api";

fn policy() -> String {
    format!(
        r#"
[[policy.rules]]
principals = ["{APP}"]
actions = ["Encrypt", "Decrypt"]
keys = ["alias/payments-*"]

[[policy.rules]]
principals = ["{ADMIN_PRINCIPAL}"]
actions = ["manage", "use"]
keys = ["*"]
"#
    )
}

#[tokio::test]
async fn encryption_calls_follow_the_policy_of_the_key_a_blob_names() {
    let (d, _config) = Daemon::start_configured(&policy()).await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let mut admin = d.keys();
    let aes = KeySpec::Aes256;
    let usage = KeyUsage::EncryptDecrypt;
    create_key(&mut admin, aes, usage, "payments-vault").await;
    create_key(&mut admin, aes, usage, "hr-vault").await;
    let sym = EncryptionAlgorithm::SymmetricDefault;
    let (hr_blob, _) = expect_ok(
        encrypt(&mut admin, "alias/hr-vault", sym, b"salaries", b"").await,
        "admin Encrypt",
    );
    let hr_blob = hr_blob.ciphertext;

    let cert = d.issue_from_dev_ca("app", Some(APP));
    let channel = d
        .connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .expect("connect as app");
    let mut app = KeyServiceClient::new(channel);
    let (mine, _) = expect_ok(
        encrypt(&mut app, "alias/payments-vault", sym, b"card token", b"").await,
        "app Encrypt",
    );
    let pt = plaintext_of(
        decrypt(&mut app, "", sym, &mine.ciphertext, b"").await,
        "app decrypts its own blob without naming the key",
    );
    assert_eq!(pt, b"card token");

    // Another team's blob: the key the blob names is not the app's.
    let r = decrypt(&mut app, "", sym, &hr_blob, b"").await;
    let rec = d.assert_refused(
        r,
        &key_method("Decrypt"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    assert_eq!(rec.str("outcome"), "denied");
    let r = encrypt(&mut app, "alias/hr-vault", sym, b"x", b"").await;
    expect_error(r, Code::PermissionDenied, "ACCESS_DENIED", "app Encrypt hr");

    // A blob naming a key that does not exist: the app is told what it is told for a
    // key it may not use; the admin (who may act on every key) learns the blob is bad.
    let mut forged = mine.ciphertext.clone();
    forged[10] ^= 0x01;
    let r = decrypt(&mut app, "", sym, &forged, b"").await;
    expect_error(
        r,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "app forged blob",
    );
    let r = decrypt(&mut admin, "", sym, &forged, b"").await;
    expect_error(
        r,
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
        "admin forged blob",
    );

    // Data keys are an action of their own.
    let r = app
        .generate_data_key(GenerateDataKeyRequest {
            key_id: "alias/payments-vault".into(),
            key_spec: 0,
            aad: Vec::new(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("GenerateDataKey"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
}
