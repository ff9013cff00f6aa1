//! Bad input against the key lifecycle, each its own test with code, reason and audit
//! record: signing with a DISABLED or PENDING_DELETION key, and deletion windows outside
//! 7..30 days. The allowed transitions around them are shown to work.

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    expect_ok,
    keys::{describe_key, state_of, unix_now},
    status::key_method,
    v1::{
        CancelKeyDeletionRequest, DisableKeyRequest, EnableKeyRequest, KeySpec, KeyState,
        MessageType, ScheduleKeyDeletionRequest, SigningAlgorithm,
    },
};
use tonic::Code;

#[tokio::test]
async fn disabled_key_cannot_sign() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    let alg = SigningAlgorithm::EcdsaSha256;
    expect_ok(
        keys.disable_key(DisableKeyRequest {
            key_id: key.clone(),
        })
        .await,
        "DisableKey",
    );
    assert_eq!(state_of(&describe_key(&d, &key).await), KeyState::Disabled);
    let r = sign(&mut keys, &key, alg, MessageType::Raw, b"m").await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::FailedPrecondition,
        "KEY_DISABLED",
    );

    expect_ok(
        keys.enable_key(EnableKeyRequest {
            key_id: key.clone(),
        })
        .await,
        "EnableKey",
    );
    expect_ok(
        sign(&mut keys, &key, alg, MessageType::Raw, b"m").await,
        "Sign after EnableKey",
    );
}

#[tokio::test]
async fn pending_deletion_key_cannot_sign() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    let (resp, _) = expect_ok(
        keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: key.clone(),
            pending_window_days: 7,
        })
        .await,
        "ScheduleKeyDeletion 7 days",
    );
    let when = resp.deletion_time.expect("deletion_time").seconds;
    let want = unix_now() + 7 * 86_400;
    assert!(
        (when - want).abs() < 3_600,
        "deletion_time {when} is not 7 days from now ({want})"
    );
    assert_eq!(
        state_of(&describe_key(&d, &key).await),
        KeyState::PendingDeletion
    );
    let r = sign(
        &mut keys,
        &key,
        SigningAlgorithm::EcdsaSha256,
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

    expect_ok(
        keys.cancel_key_deletion(CancelKeyDeletionRequest {
            key_id: key.clone(),
        })
        .await,
        "CancelKeyDeletion",
    );
    assert_eq!(
        state_of(&describe_key(&d, &key).await),
        KeyState::Disabled,
        "a cancelled deletion leaves the key DISABLED (keys.proto)"
    );
}

#[tokio::test]
async fn deletion_window_outside_7_to_30_days() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    for days in [6u32, 31, 1, 365] {
        let r = keys
            .schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: key.clone(),
                pending_window_days: days,
            })
            .await;
        d.assert_refused(
            r,
            &key_method("ScheduleKeyDeletion"),
            Code::InvalidArgument,
            "INVALID_DELETION_WINDOW",
        );
        assert_eq!(
            state_of(&describe_key(&d, &key).await),
            KeyState::Enabled,
            "a refused {days}-day window must leave the key ENABLED"
        );
    }
    let (resp, _) = expect_ok(
        keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: key.clone(),
            pending_window_days: 30,
        })
        .await,
        "ScheduleKeyDeletion 30 days",
    );
    let when = resp.deletion_time.expect("deletion_time").seconds;
    let want = unix_now() + 30 * 86_400;
    assert!(
        (when - want).abs() < 3_600,
        "deletion_time {when} is not 30 days from now ({want})"
    );
}
