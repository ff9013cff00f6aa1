//! Automatic rotation on a manual clock: a key created with a 7-day rotation period is
//! rotated by the lifecycle sweep (principal "hsmd") once the clock passes its date, and
//! again a period later; a key with rotation disabled, or disabled itself, is left
//! alone. Blobs of every version still open. When the rotated key is destroyed after its
//! deletion window, every version's object leaves the token (pkcs11-tool).
//!
//! The daemon runs in this process on a manual clock ([`InProcess`]): one test here.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    InProcess, Instance, Need,
    crypt::{decrypt, encrypt, plaintext_of},
    expect_ok,
    inprocess::DAY,
    keys::describe_key,
    v1::{
        CreateKeyRequest, DisableKeyRequest, DisableKeyRotationRequest, EncryptionAlgorithm,
        KeySpec, KeyState, KeyUsage, ScheduleKeyDeletionRequest,
    },
};

const SWEEP_TIMEOUT: Duration = Duration::from_secs(90);
const SYM: EncryptionAlgorithm = EncryptionAlgorithm::SymmetricDefault;

async fn create_rotating(d: &Instance, days: u32) -> String {
    let req = CreateKeyRequest {
        spec: KeySpec::Aes256 as i32,
        usage: KeyUsage::EncryptDecrypt as i32,
        rotation_period_days: days,
        ..Default::default()
    };
    hsmd_e2e::keys::create(&mut d.keys(), req, "rotating AES key").await
}

async fn seal(d: &Instance, key: &str, text: &[u8]) -> Vec<u8> {
    expect_ok(encrypt(&mut d.keys(), key, SYM, text, b"").await, "Encrypt")
        .0
        .ciphertext
}

/// Waits until the sweep has brought `key` to `version`.
async fn wait_for_version(d: &Instance, key: &str, version: u32) {
    let deadline = Instant::now() + SWEEP_TIMEOUT;
    loop {
        let now = describe_key(d, key).await.current_version;
        if now == version {
            return;
        }
        assert!(
            Instant::now() < deadline && now < version,
            "key {key} at version {now}, waiting for {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_rotates_due_keys_and_destroy_removes_every_version() {
    let d = InProcess::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let rotating = create_rotating(&d, 7).await;
    let off = create_rotating(&d, 7).await;
    let disabled = create_rotating(&d, 7).await;
    let meta = describe_key(&d, &rotating).await;
    assert_eq!(meta.rotation_period_days, 7);
    let next = meta.next_rotation_time.expect("next_rotation_time").seconds;
    assert!(
        (next - (d.now() + 7 * DAY)).abs() < 3_600,
        "next rotation in 7 days"
    );
    expect_ok(
        d.keys()
            .disable_key_rotation(DisableKeyRotationRequest {
                key_id: off.clone(),
            })
            .await,
        "DisableKeyRotation",
    );
    expect_ok(
        d.keys()
            .disable_key(DisableKeyRequest {
                key_id: disabled.clone(),
            })
            .await,
        "DisableKey",
    );
    let v1 = seal(&d, &rotating, b"made by version 1").await;

    // Not yet due: a day short of the period, nothing rotates.
    d.clock().advance(6 * DAY);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(describe_key(&d, &rotating).await.current_version, 1);

    d.clock().advance(DAY + 60);
    wait_for_version(&d, &rotating, 2).await;
    let v2 = seal(&d, &rotating, b"made by version 2").await;
    assert_eq!(&v2[..5], b"HSMD\x02");
    d.clock().advance(7 * DAY + 60);
    wait_for_version(&d, &rotating, 3).await;
    for (blob, text) in [
        (&v1, &b"made by version 1"[..]),
        (&v2, b"made by version 2"),
    ] {
        let back = plaintext_of(decrypt(&mut d.keys(), "", SYM, blob, b"").await, "Decrypt");
        assert_eq!(back, text);
    }
    for left_alone in [&off, &disabled] {
        assert_eq!(
            describe_key(&d, left_alone).await.current_version,
            1,
            "{left_alone} rotated though its rotation is off or it is disabled"
        );
    }
    let rotations: Vec<_> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l.str("method") == "hsmd/RotateKey")
        .collect();
    assert_eq!(rotations.len(), 2, "two automatic rotations audited");
    for r in &rotations {
        assert_eq!(
            (r.str("principal"), r.str("key_id"), r.str("outcome")),
            ("hsmd", rotating.as_str(), "ok")
        );
    }

    // Three versions, three objects; destroyed together.
    let labels = |d: &InProcess| -> Vec<String> {
        d.token_objects(true)
            .iter()
            .map(|o| o.field("label").to_owned())
            .filter(|l| l.starts_with(&rotating))
            .collect()
    };
    let mut before = labels(&d);
    before.sort();
    assert_eq!(
        before,
        vec![
            rotating.clone(),
            format!("{rotating} v2"),
            format!("{rotating} v3")
        ]
    );
    expect_ok(
        d.keys()
            .schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: rotating.clone(),
                pending_window_days: 7,
            })
            .await,
        "ScheduleKeyDeletion",
    );
    d.clock().advance(7 * DAY + 60);
    let deadline = Instant::now() + SWEEP_TIMEOUT;
    while describe_key(&d, &rotating).await.state != KeyState::Destroyed as i32 {
        assert!(Instant::now() < deadline, "key not destroyed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        labels(&d),
        Vec::<String>::new(),
        "version objects left behind"
    );
}
