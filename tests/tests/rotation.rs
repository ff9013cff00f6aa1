//! Rotation of AES-256 keys, end to end on the real daemon and token: RotateKey makes a
//! new version (a new sensitive, never-extractable secret key object, seen with
//! pkcs11-tool); Encrypt uses the newest version and its blob names it; blobs, data keys
//! and envelope files made by earlier versions still decrypt, also after a restart; a
//! version the key never had, a tampered version field and asymmetric or imported keys
//! are refused with their reasons; disabling the key stops every version.

use std::fs;

use hsmd_e2e::{
    Daemon, Need, args,
    crypt::{create_key, decrypt, encrypt, plaintext_of},
    expect_ok,
    keys::describe_key,
    status::key_method,
    tools::write_file,
    v1::{
        CreateKeyRequest, DisableKeyRequest, EnableKeyRotationRequest, EncryptionAlgorithm,
        GenerateDataKeyRequest, KeyOrigin, KeySpec, KeyUsage, RotateKeyRequest,
    },
};
use tonic::Code;

const SYM: EncryptionAlgorithm = EncryptionAlgorithm::SymmetricDefault;

async fn seal(d: &Daemon, key: &str, plaintext: &[u8]) -> Vec<u8> {
    let r = encrypt(&mut d.keys(), key, SYM, plaintext, b"ctx").await;
    expect_ok(r, "Encrypt").0.ciphertext
}

async fn open(d: &Daemon, key: &str, blob: &[u8]) -> Vec<u8> {
    plaintext_of(
        decrypt(&mut d.keys(), key, SYM, blob, b"ctx").await,
        "Decrypt",
    )
}

fn versions_json(d: &Daemon, key: &str) -> serde_json::Value {
    let text = d.hsmctl_ok(args!["-o", "json", "key", "describe", key]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn rotated_keys_encrypt_with_the_newest_version_and_decrypt_every_version() {
    let mut d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let key = create_key(
        &mut d.keys(),
        KeySpec::Aes256,
        KeyUsage::EncryptDecrypt,
        "rot",
    )
    .await;
    let dir = d.scratch();

    // Before any rotation: version 1, format 1 blobs, as before keys had versions.
    let v1 = seal(&d, &key, b"first secret").await;
    assert_eq!(&v1[..5], b"HSMD\x01", "version 1 keeps blob format 1");
    let dk = expect_ok(
        d.keys()
            .generate_data_key(GenerateDataKeyRequest {
                key_id: key.clone(),
                key_spec: KeySpec::Aes256 as i32,
                aad: b"ctx".to_vec(),
            })
            .await,
        "GenerateDataKey",
    )
    .0;
    let plain = write_file(
        &dir,
        "plain.txt",
        &b"envelope before rotation\n".repeat(1000),
    );
    let sealed = dir.join("sealed.env");
    d.hsmctl_ok(args![
        "envelope",
        "encrypt",
        "alias/rot",
        "--in",
        plain,
        "--out",
        sealed
    ]);

    // hsmctl key rotate prints the new version; describe lists both.
    let out = d.hsmctl_ok(args!["key", "rotate", "alias/rot"]);
    assert_eq!(out.trim(), format!("{key} version 2"));
    let meta = versions_json(&d, "alias/rot");
    assert_eq!(meta["current_version"], 2, "{meta}");
    let versions = meta["versions"].as_array().expect("versions array");
    assert_eq!(versions.len(), 2, "{meta}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[1]["version"], 2);
    assert!(versions[1]["create_time"].is_string(), "{meta}");
    let rotations: Vec<_> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l.str("method") == key_method("RotateKey"))
        .collect();
    assert_eq!(rotations.len(), 1, "one RotateKey record");
    assert_eq!(rotations[0].str("key_id"), key);
    assert_eq!(rotations[0].str("outcome"), "ok");
    assert_eq!(rotations[0].str("note"), "version 2");

    // New blobs name version 2 (format 2); every old one still opens.
    let v2 = seal(&d, "alias/rot", b"second secret").await;
    assert_eq!(&v2[..5], b"HSMD\x02", "later versions use blob format 2");
    assert_eq!(&v2[21..25], &2u32.to_be_bytes(), "the blob names version 2");
    assert_eq!(open(&d, &key, &v1).await, b"first secret");
    assert_eq!(open(&d, "", &v2).await, b"second secret");
    let back = plaintext_of(
        decrypt(&mut d.keys(), "", SYM, &dk.ciphertext_blob, b"ctx").await,
        "Decrypt data key of version 1",
    );
    assert_eq!(back, dk.plaintext, "data key of version 1");
    let opened = dir.join("opened.txt");
    d.hsmctl_ok(args![
        "envelope", "decrypt", "--in", sealed, "--out", opened
    ]);
    assert_eq!(fs::read(&opened).unwrap(), fs::read(&plain).unwrap());

    // A version the key never had, and a version field changed in transit.
    let mut never = v2.clone();
    never[21..25].copy_from_slice(&9u32.to_be_bytes());
    d.assert_refused(
        decrypt(&mut d.keys(), &key, SYM, &never, b"ctx").await,
        &key_method("Decrypt"),
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
    );
    // Version 2's blob relabelled as format 1 (version 1): the header is in the AAD, so
    // the token refuses it rather than decrypting under the wrong version.
    let mut relabelled = v2.clone();
    relabelled[4] = 1;
    relabelled.drain(21..25);
    d.assert_refused(
        decrypt(&mut d.keys(), &key, SYM, &relabelled, b"ctx").await,
        &key_method("Decrypt"),
        Code::InvalidArgument,
        "DECRYPTION_FAILED",
    );

    // Each version is its own sensitive, never-extractable AES object in the token.
    let objects = d.token_objects(true);
    let label_v2 = format!("{key} v2");
    for label in [key.as_str(), label_v2.as_str()] {
        let mine: Vec<_> = objects
            .iter()
            .filter(|o| o.field("label") == label)
            .collect();
        assert_eq!(mine.len(), 1, "{label}: {objects:#?}");
        assert!(mine[0].header.starts_with("Secret Key Object"), "{mine:?}");
        let access = mine[0].field("Access");
        assert!(
            access.contains("sensitive") && access.contains("never extractable"),
            "{label}: Access {access:?}"
        );
        assert!(
            !mine[0].words("Access").iter().any(|w| w == "extractable"),
            "{label}: CKA_EXTRACTABLE: {access:?}"
        );
    }

    // Versions survive a restart.
    d.restart().await;
    assert_eq!(describe_key(&d, &key).await.current_version, 2);
    assert_eq!(open(&d, &key, &v1).await, b"first secret");
    assert_eq!(open(&d, &key, &v2).await, b"second secret");
    let out = d.hsmctl_ok(args!["key", "rotate", &key]);
    assert_eq!(out.trim(), format!("{key} version 3"));
    assert_eq!(open(&d, &key, &v2).await, b"second secret");

    // Disabling the key stops every version.
    expect_ok(
        d.keys()
            .disable_key(DisableKeyRequest {
                key_id: key.clone(),
            })
            .await,
        "DisableKey",
    );
    for blob in [&v1, &v2] {
        d.assert_refused(
            decrypt(&mut d.keys(), &key, SYM, blob, b"ctx").await,
            &key_method("Decrypt"),
            Code::FailedPrecondition,
            "KEY_DISABLED",
        );
    }
    d.assert_refused(
        d.keys()
            .rotate_key(RotateKeyRequest {
                key_id: key.clone(),
            })
            .await,
        &key_method("RotateKey"),
        Code::FailedPrecondition,
        "KEY_DISABLED",
    );
}

#[tokio::test]
async fn keys_that_cannot_rotate_say_so() {
    let d = Daemon::start().await;
    let ec = create_key(&mut d.keys(), KeySpec::EcP256, KeyUsage::SignVerify, "").await;
    let rsa = create_key(
        &mut d.keys(),
        KeySpec::Rsa2048,
        KeyUsage::EncryptDecrypt,
        "",
    )
    .await;
    let aes_offered = d.offers(Need::Aes256).await;
    let external = if aes_offered && d.offers(Need::Import).await {
        let key = hsmd_e2e::keys::create(
            &mut d.keys(),
            CreateKeyRequest {
                spec: KeySpec::Aes256 as i32,
                usage: KeyUsage::EncryptDecrypt as i32,
                origin: KeyOrigin::External as i32,
                ..Default::default()
            },
            "external AES",
        )
        .await;
        Some(key)
    } else {
        None
    };
    for key in [&ec, &rsa].into_iter().chain(&external) {
        d.assert_refused(
            d.keys()
                .rotate_key(RotateKeyRequest {
                    key_id: key.clone(),
                })
                .await,
            &key_method("RotateKey"),
            Code::FailedPrecondition,
            "ROTATION_NOT_SUPPORTED",
        );
        d.assert_refused(
            d.keys()
                .enable_key_rotation(EnableKeyRotationRequest {
                    key_id: key.clone(),
                    rotation_period_days: 30,
                })
                .await,
            &key_method("EnableKeyRotation"),
            Code::FailedPrecondition,
            "ROTATION_NOT_SUPPORTED",
        );
    }
    let out = d.hsmctl(args!["key", "rotate", &ec]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("ROTATION_NOT_SUPPORTED"),
        "{}",
        out.describe()
    );

    // Periods outside 7..365 days, at creation and later.
    if !aes_offered {
        return;
    }
    let aes = create_key(&mut d.keys(), KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await;
    for days in [1, 6, 366] {
        d.assert_refused(
            d.keys()
                .enable_key_rotation(EnableKeyRotationRequest {
                    key_id: aes.clone(),
                    rotation_period_days: days,
                })
                .await,
            &key_method("EnableKeyRotation"),
            Code::InvalidArgument,
            "INVALID_ROTATION_PERIOD",
        );
        d.assert_refused(
            d.keys()
                .create_key(CreateKeyRequest {
                    spec: KeySpec::Aes256 as i32,
                    usage: KeyUsage::EncryptDecrypt as i32,
                    rotation_period_days: days,
                    ..Default::default()
                })
                .await,
            &key_method("CreateKey"),
            Code::InvalidArgument,
            "INVALID_ROTATION_PERIOD",
        );
    }
    let meta = expect_ok(
        d.keys()
            .enable_key_rotation(EnableKeyRotationRequest {
                key_id: aes.clone(),
                rotation_period_days: 90,
            })
            .await,
        "EnableKeyRotation",
    )
    .0
    .key
    .expect("key");
    assert_eq!(meta.rotation_period_days, 90);
    assert!(meta.next_rotation_time.is_some());
    let json = versions_json(&d, &aes);
    assert_eq!(json["rotation_period_days"], 90, "{json}");
    d.hsmctl_ok(args!["key", "disable-rotation", &aes]);
    let json = versions_json(&d, &aes);
    assert!(json["rotation_period_days"].is_null(), "{json}");
    assert!(json["next_rotation_time"].is_null(), "{json}");
}
