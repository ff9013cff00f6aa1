//! Restarting `hsmd dev` on the same data folder keeps everything: key material (same
//! public keys, old signatures still verify), aliases, states, deletion dates, the dev
//! CA and PIN, and the audit chain (sequence continues, the chain still verifies).

use hsmd_e2e::{
    Daemon, Need,
    algorithms::{create_key, sign, verify},
    audit::check_chain,
    expect_ok,
    status::key_method,
    v1::{
        CreateAliasRequest, DescribeKeyRequest, DisableKeyRequest, GetPublicKeyRequest, KeySpec,
        KeyState, ListKeysRequest, MessageType, ScheduleKeyDeletionRequest, SigningAlgorithm,
        VerifyAuditLogRequest,
    },
};
use tonic::Code;

async fn describe(d: &Daemon, key_id: &str) -> hsmd_e2e::v1::KeyMetadata {
    let req = DescribeKeyRequest {
        key_id: key_id.to_owned(),
    };
    let (resp, _) = expect_ok(d.keys().describe_key(req).await, "DescribeKey");
    resp.key.expect("key")
}

async fn public_der(d: &Daemon, key_id: &str) -> Vec<u8> {
    let req = GetPublicKeyRequest {
        key_id: key_id.to_owned(),
    };
    expect_ok(d.keys().get_public_key(req).await, "GetPublicKey")
        .0
        .public_key_der
}

fn read(d: &Daemon, rel: &str) -> Vec<u8> {
    std::fs::read(d.data_dir().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

#[tokio::test]
async fn restart_keeps_keys_aliases_states_and_audit_chain() {
    let mut d = Daemon::start().await;
    let mut keys = d.keys();
    let active = create_key(&mut keys, KeySpec::EcP256, "restart-active").await;
    // Ed25519 where the token has it, so three specs survive the restart.
    let (disabled_spec, disabled_alg) = if d.offers(Need::Ed25519).await {
        (KeySpec::Ed25519, SigningAlgorithm::Ed25519Sha512)
    } else {
        (KeySpec::Rsa2048, SigningAlgorithm::RsaPssSha256)
    };
    let disabled = create_key(&mut keys, disabled_spec, "").await;
    let pending = create_key(&mut keys, KeySpec::EcP384, "").await;
    let req = CreateAliasRequest {
        alias_name: "alias/restart/disabled".into(),
        target_key_id: disabled.clone(),
    };
    expect_ok(keys.create_alias(req).await, "CreateAlias");
    expect_ok(
        keys.disable_key(DisableKeyRequest {
            key_id: disabled.clone(),
        })
        .await,
        "DisableKey",
    );
    let req = ScheduleKeyDeletionRequest {
        key_id: pending.clone(),
        pending_window_days: 10,
    };
    expect_ok(keys.schedule_key_deletion(req).await, "ScheduleKeyDeletion");
    let alg = SigningAlgorithm::EcdsaSha256;
    let (signed, _) = expect_ok(
        sign(&mut keys, &active, alg, MessageType::Raw, b"before").await,
        "Sign",
    );

    let before = [
        describe(&d, &active).await,
        describe(&d, &disabled).await,
        describe(&d, &pending).await,
    ];
    let pub_active = public_der(&d, &active).await;
    let pub_disabled = public_der(&d, &disabled).await;
    let files = ["tls/ca.pem", "tls/client.pem", "pin"].map(|f| read(&d, f));
    let old_lines = d.audit_lines();

    d.restart().await;
    let mut keys = d.keys();
    for (f, old) in ["tls/ca.pem", "tls/client.pem", "pin"].iter().zip(&files) {
        assert_eq!(
            &read(&d, f),
            old,
            "{f} was re-provisioned on restart instead of reused"
        );
    }

    // Keys, states, aliases and dates as before.
    let after = [
        describe(&d, &active).await,
        describe(&d, &disabled).await,
        describe(&d, &pending).await,
    ];
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            a.state, b.state,
            "state of {} changed across restart",
            a.key_id
        );
        assert_eq!(a.spec, b.spec, "spec of {}", a.key_id);
        assert_eq!(
            a.deletion_time, b.deletion_time,
            "deletion_time of {}",
            a.key_id
        );
        assert_eq!(a.create_time, b.create_time, "create_time of {}", a.key_id);
        let (mut x, mut y) = (a.aliases.clone(), b.aliases.clone());
        x.sort();
        y.sort();
        assert_eq!(x, y, "aliases of {}", a.key_id);
    }
    assert_eq!(KeyState::try_from(after[1].state), Ok(KeyState::Disabled));
    assert_eq!(
        KeyState::try_from(after[2].state),
        Ok(KeyState::PendingDeletion)
    );
    assert_eq!(describe(&d, "alias/restart-active").await.key_id, active);
    assert_eq!(
        describe(&d, "alias/restart/disabled").await.key_id,
        disabled
    );
    let (list, _) = expect_ok(keys.list_keys(ListKeysRequest::default()).await, "ListKeys");
    assert_eq!(
        list.keys.len(),
        3,
        "ListKeys after restart: {:?}",
        list.keys
    );

    // Same key material: same public keys, the old signature verifies, new ones work.
    assert_eq!(
        public_der(&d, &active).await,
        pub_active,
        "public key changed"
    );
    assert_eq!(
        public_der(&d, &disabled).await,
        pub_disabled,
        "public key changed"
    );
    let (v, _) = expect_ok(
        verify(
            &mut keys,
            &active,
            alg,
            MessageType::Raw,
            b"before",
            &signed.signature,
        )
        .await,
        "Verify",
    );
    assert!(
        v.valid,
        "a signature made before the restart no longer verifies"
    );
    expect_ok(
        sign(&mut keys, &active, alg, MessageType::Raw, b"after").await,
        "Sign after restart",
    );
    let r = sign(&mut keys, &disabled, disabled_alg, MessageType::Raw, b"m").await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::FailedPrecondition,
        "KEY_DISABLED",
    );
    let r = sign(
        &mut keys,
        &pending,
        SigningAlgorithm::EcdsaSha384,
        MessageType::Raw,
        b"m",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::FailedPrecondition,
        "KEY_PENDING_DELETION",
    );

    // The audit chain continues where it stopped.
    let lines = d.audit_lines();
    assert_eq!(
        lines[..old_lines.len()]
            .iter()
            .map(|l| &l.raw)
            .collect::<Vec<_>>(),
        old_lines.iter().map(|l| &l.raw).collect::<Vec<_>>(),
        "records written before the restart changed"
    );
    let first_new = &lines[old_lines.len()];
    let last_old = old_lines.last().expect("records before restart");
    assert_eq!(
        first_new.seq(),
        last_old.seq() + 1,
        "seq restarted: {}",
        first_new.raw
    );
    check_chain(&lines[old_lines.len() - 1..=old_lines.len()])
        .unwrap_or_else(|e| panic!("the chain does not continue across the restart: {e}"));
    check_chain(&lines).unwrap_or_else(|e| panic!("hash chain broken across restart: {e}"));
    let (resp, _) = expect_ok(
        d.audit().verify_audit_log(VerifyAuditLogRequest {}).await,
        "VerifyAuditLog",
    );
    assert!(resp.ok, "VerifyAuditLog after restart: {resp:?}");
    let out = d.hsmctl(["audit", "verify"]);
    assert!(
        out.success() && out.stdout.trim_start().starts_with("ok"),
        "{}",
        out.describe()
    );
}
