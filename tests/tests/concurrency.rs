//! Concurrent calls that change the token. SoftHSM2's file object store fails token-object
//! writes that race each other (or a read) with CKR_GENERAL_ERROR; hsmd must serialize
//! them so that callers never see it. Signing runs alongside and stays correct.

use hsmd_e2e::{
    Daemon, TokenKind,
    algorithms::{create_key, sign},
    expect_ok,
    v1::{KeySpec, MessageType, ScheduleKeyDeletionRequest, SigningAlgorithm},
};

#[tokio::test]
async fn concurrent_creates_signs_and_deletions_all_succeed() {
    let d = Daemon::start().await;
    let signer = create_key(&mut d.keys(), KeySpec::EcP256, "").await;

    // tpm2-pkcs11 keeps every key it has used loaded for the life of its connection,
    // and tpm2-abrmd allows a client 100 loaded objects at most (two per key pair), so
    // one hsmd on the TPM token runs out below 50 keys (README "Tokens"): fewer there.
    let calls = match TokenKind::under_test() {
        TokenKind::SoftHsm => 48,
        TokenKind::Tpm => 24,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut keys = d.keys();
        let signer = signer.clone();
        tasks.spawn(async move {
            let spec = if i % 6 == 0 {
                KeySpec::Rsa2048
            } else {
                KeySpec::EcP256
            };
            let key = create_key(&mut keys, spec, "").await;
            let r = sign(
                &mut keys,
                &signer,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                b"m",
            )
            .await;
            expect_ok(r, "Sign beside CreateKey");
            if i % 4 == 0 {
                let req = ScheduleKeyDeletionRequest {
                    key_id: key.clone(),
                    pending_window_days: 7,
                };
                expect_ok(keys.schedule_key_deletion(req).await, "ScheduleKeyDeletion");
            }
            key
        });
    }
    let mut created = Vec::new();
    while let Some(r) = tasks.join_next().await {
        created.push(r.expect("task"));
    }
    created.sort();
    created.dedup();
    assert_eq!(created.len(), calls, "{calls} distinct keys");

    // Every key is in the token: private and public object with its CKA_ID.
    let objects = d.token_objects(true);
    for key in &created {
        let id = hsmd_e2e::pkcs11::key_id_hex(key);
        let with_id: Vec<_> = objects.iter().filter(|o| o.field("ID") == id).collect();
        assert!(
            with_id.iter().any(|o| o.is_private_key()) && with_id.iter().any(|o| o.is_public_key()),
            "key {key} lacks a token object: {with_id:?}"
        );
    }
}
