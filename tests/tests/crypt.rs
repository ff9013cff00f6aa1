//! Encryption end to end (issue 3): RSA-OAEP ciphertexts made by `openssl pkeyutl` with
//! the exported public key decrypt in hsmd for every RSA size and both hashes; every
//! decryption failure is one and the same error and audit record (no padding oracle);
//! key usages hold in hsmd and in the token's attributes; AES-GCM blobs round trip and
//! refuse every single-bit flip; data keys decrypt back to themselves; and no plaintext
//! or data key reaches the audit log or the daemon's log.

use base64::Engine;
use hsmd_e2e::{
    Daemon, Need,
    crypt::{create_key, decrypt, encrypt, oaep_md, openssl_oaep_encrypt, plaintext_of},
    expect_error, expect_ok,
    pkcs11::P11Object,
    status::{describe, key_method},
    tools::write_file,
    v1::{
        DescribeKeyRequest, EncryptionAlgorithm, GenerateDataKeyRequest,
        GenerateDataKeyWithoutPlaintextRequest, GetPublicKeyRequest, GetTokenInfoRequest, KeySpec,
        KeyUsage, MessageType, SignRequest,
    },
};
use sha2::{Digest, Sha256};
use tonic::Code;

const OAEP: [EncryptionAlgorithm; 2] = [
    EncryptionAlgorithm::RsaesOaepSha256,
    EncryptionAlgorithm::RsaesOaepSha1,
];

/// openssl OAEP (SHA-1 and SHA-256) with the exported public key -> hsmd Decrypt gives
/// the exact plaintext; hsmd Encrypt -> hsmd Decrypt too.
async fn oaep_interop(spec: KeySpec) {
    let d = Daemon::start().await;
    if !d.offers_spec(spec).await {
        return;
    }
    let mut keys = d.keys();
    let key = create_key(&mut keys, spec, KeyUsage::EncryptDecrypt, "").await;
    let (public, _) = expect_ok(
        keys.get_public_key(GetPublicKeyRequest {
            key_id: key.clone(),
        })
        .await,
        "GetPublicKey",
    );
    assert_eq!(
        public.encryption_algorithms,
        OAEP.map(|a| a as i32),
        "{spec:?}: GetPublicKey lists the OAEP algorithms"
    );
    assert!(public.signing_algorithms.is_empty(), "{spec:?}");
    let dir = d.scratch();
    let pem = write_file(&dir, "pub.pem", public.public_key_pem.as_bytes());
    let message = b"the launch code is 0000\x00\x01\xff and binary bytes";
    for alg in OAEP {
        let ct = openssl_oaep_encrypt(&dir, &pem, oaep_md(alg), message);
        assert_eq!(ct.len() * 8, spec_bits(spec), "{spec:?} {alg:?}");
        let pt = plaintext_of(
            decrypt(&mut keys, &key, alg, &ct, b"").await,
            &format!("{spec:?} {alg:?} openssl ciphertext"),
        );
        assert_eq!(pt, message, "{spec:?} {alg:?}");

        let (enc, _) = expect_ok(
            encrypt(&mut keys, &key, alg, message, b"").await,
            "Encrypt RSA",
        );
        assert_eq!(enc.encryption_algorithm, alg as i32);
        let pt = plaintext_of(
            decrypt(&mut keys, &key, alg, &enc.ciphertext, b"").await,
            "hsmd round trip",
        );
        assert_eq!(pt, message, "{spec:?} {alg:?} hsmd round trip");
    }
}

fn spec_bits(spec: KeySpec) -> usize {
    match spec {
        KeySpec::Rsa2048 => 2048,
        KeySpec::Rsa3072 => 3072,
        KeySpec::Rsa4096 => 4096,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn openssl_oaep_decrypts_rsa_2048() {
    oaep_interop(KeySpec::Rsa2048).await;
}

#[tokio::test]
async fn openssl_oaep_decrypts_rsa_3072() {
    oaep_interop(KeySpec::Rsa3072).await;
}

#[tokio::test]
async fn openssl_oaep_decrypts_rsa_4096() {
    oaep_interop(KeySpec::Rsa4096).await;
}

#[tokio::test]
async fn every_decryption_failure_is_the_same_error() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let a = create_key(&mut keys, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "").await;
    let b = create_key(&mut keys, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "").await;
    let big = create_key(&mut keys, KeySpec::Rsa3072, KeyUsage::EncryptDecrypt, "").await;
    let msg = b"sixteen byte msg";
    let mut ct = std::collections::HashMap::new();
    for alg in OAEP {
        let (r, _) = expect_ok(encrypt(&mut keys, &a, alg, msg, b"").await, "Encrypt");
        ct.insert(alg as i32, r.ciphertext);
    }
    let sha256 = ct[&(EncryptionAlgorithm::RsaesOaepSha256 as i32)].clone();
    let sha1 = ct[&(EncryptionAlgorithm::RsaesOaepSha1 as i32)].clone();
    let (on_big, _) = expect_ok(
        encrypt(
            &mut keys,
            &big,
            EncryptionAlgorithm::RsaesOaepSha256,
            msg,
            b"",
        )
        .await,
        "Encrypt 3072",
    );
    let flip = |c: &[u8], i: usize| {
        let mut c = c.to_vec();
        c[i] ^= 0x01;
        c
    };
    use EncryptionAlgorithm::{RsaesOaepSha1 as S1, RsaesOaepSha256 as S256};
    let cases: Vec<(&str, &str, EncryptionAlgorithm, Vec<u8>)> = vec![
        ("tampered first byte", a.as_str(), S256, flip(&sha256, 0)),
        ("tampered middle byte", a.as_str(), S256, flip(&sha256, 128)),
        ("tampered last byte", a.as_str(), S256, flip(&sha256, 255)),
        ("tampered SHA-1", a.as_str(), S1, flip(&sha1, 200)),
        ("truncated", a.as_str(), S256, sha256[..255].to_vec()),
        (
            "one byte too long",
            a.as_str(),
            S256,
            [&sha256[..], &[0]].concat(),
        ),
        ("empty", a.as_str(), S256, Vec::new()),
        ("wrong key, same size", b.as_str(), S256, sha256.clone()),
        (
            "wrong key, other size",
            a.as_str(),
            S256,
            on_big.ciphertext.clone(),
        ),
        (
            "SHA-256 ciphertext as SHA-1",
            a.as_str(),
            S1,
            sha256.clone(),
        ),
        (
            "SHA-1 ciphertext as SHA-256",
            a.as_str(),
            S256,
            sha1.clone(),
        ),
        ("larger than the modulus", a.as_str(), S256, vec![0xff; 256]),
        ("all zeros", a.as_str(), S1, vec![0; 256]),
    ];
    let mut messages = Vec::new();
    for (what, key, alg, c) in cases {
        let r = decrypt(&mut keys, key, alg, &c, b"").await;
        let status = r.as_ref().err().cloned();
        let rec = d.assert_refused(
            r,
            &key_method("Decrypt"),
            Code::InvalidArgument,
            "DECRYPTION_FAILED",
        );
        assert_eq!(rec.str("outcome"), "invalid", "{what}");
        messages.push((what, status.expect("refused").message().to_owned()));
    }
    for (what, m) in &messages {
        assert_eq!(m, &messages[0].1, "{what}: the message must not vary");
    }
    // The sessions are still good: the real ciphertexts decrypt.
    for alg in OAEP {
        let pt = plaintext_of(
            decrypt(&mut keys, &a, alg, &ct[&(alg as i32)], b"").await,
            "after failures",
        );
        assert_eq!(pt, msg);
    }
    // PKCS#1 v1.5 is refused, naming OAEP.
    let r = decrypt(
        &mut keys,
        &a,
        EncryptionAlgorithm::RsaesPkcs1V15,
        &sha256,
        b"",
    )
    .await;
    let status = r.as_ref().err().cloned().expect("PKCS#1 v1.5 refused");
    d.assert_refused(
        r,
        &key_method("Decrypt"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
    assert!(status.message().contains("OAEP"), "{}", describe(&status));
    let r = encrypt(&mut keys, &a, EncryptionAlgorithm::RsaesPkcs1V15, msg, b"").await;
    expect_error(
        r,
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
        "PKCS1 encrypt",
    );
    // An RSA key needs its algorithm named, and a key id.
    let r = decrypt(
        &mut keys,
        &a,
        EncryptionAlgorithm::Unspecified,
        &sha256,
        b"",
    )
    .await;
    expect_error(r, Code::InvalidArgument, "INVALID_ARGUMENT", "no algorithm");
    let r = decrypt(&mut keys, "", S256, &sha256, b"").await;
    expect_error(r, Code::InvalidArgument, "INVALID_ARGUMENT", "no key id");
    let r = decrypt(
        &mut keys,
        &a,
        EncryptionAlgorithm::SymmetricDefault,
        &sha256,
        b"",
    )
    .await;
    expect_error(
        r,
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
        "AES on RSA",
    );
    // OAEP size limit: 256 - 2*32 - 2 = 190 bytes with SHA-256.
    expect_ok(
        encrypt(&mut keys, &a, S256, &[1; 190], b"").await,
        "190 bytes",
    );
    let r = encrypt(&mut keys, &a, S256, &[1; 191], b"").await;
    d.assert_refused(
        r,
        &key_method("Encrypt"),
        Code::InvalidArgument,
        "PLAINTEXT_TOO_LARGE",
    );
}

fn private_object<'a>(objects: &'a [P11Object], key: &str) -> &'a P11Object {
    objects
        .iter()
        .find(|o| o.field("label") == key && !o.is_public_key())
        .unwrap_or_else(|| panic!("no private/secret object for {key}: {objects:#?}"))
}

#[tokio::test]
async fn usages_hold_in_hsmd_and_in_the_token() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let signing = create_key(&mut keys, KeySpec::Rsa2048, KeyUsage::SignVerify, "").await;
    let rsa = create_key(&mut keys, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "").await;
    let aes = if d.offers(Need::Aes256).await {
        Some(create_key(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await)
    } else {
        None
    };
    let sha256 = EncryptionAlgorithm::RsaesOaepSha256;

    let r = decrypt(&mut keys, &signing, sha256, &[0; 256], b"").await;
    d.assert_refused(
        r,
        &key_method("Decrypt"),
        Code::FailedPrecondition,
        "WRONG_KEY_USAGE",
    );
    let r = encrypt(&mut keys, &signing, sha256, b"x", b"").await;
    d.assert_refused(
        r,
        &key_method("Encrypt"),
        Code::FailedPrecondition,
        "WRONG_KEY_USAGE",
    );
    for key in std::iter::once(&rsa).chain(&aes) {
        let alg = hsmd_e2e::v1::SigningAlgorithm::RsaPkcs1Sha256;
        let r = keys
            .sign(SignRequest {
                key_id: key.clone(),
                algorithm: alg as i32,
                message_type: MessageType::Raw as i32,
                message: b"m".to_vec(),
            })
            .await;
        d.assert_refused(
            r,
            &key_method("Sign"),
            Code::FailedPrecondition,
            "WRONG_KEY_USAGE",
        );
    }
    if let Some(aes) = &aes {
        let (meta, _) = expect_ok(
            keys.describe_key(DescribeKeyRequest {
                key_id: aes.clone(),
            })
            .await,
            "DescribeKey",
        );
        let meta = meta.key.expect("key");
        assert_eq!(
            meta.encryption_algorithms,
            [EncryptionAlgorithm::SymmetricDefault as i32]
        );
    }

    // The token's own attributes, seen by pkcs11-tool, where the token keeps them as
    // asked (tpm2-pkcs11 gives every key pair sign and decrypt; token info says so,
    // checked in tpm.rs, and hsmd alone enforces usage there: the refusals above).
    let (info, _) = expect_ok(
        d.token().get_token_info(GetTokenInfoRequest {}).await,
        "GetTokenInfo",
    );
    if !info.usage_enforced_by_token {
        return;
    }
    let objects = d.token_objects(true);
    let words = |key: &str| private_object(&objects, key).words("Usage");
    let s = words(&signing);
    assert!(
        s.contains(&"sign".to_string()) && !s.contains(&"decrypt".to_string()),
        "signing key usage {s:?}"
    );
    let e = words(&rsa);
    assert!(
        e.contains(&"decrypt".to_string()) && !e.contains(&"sign".to_string()),
        "encryption key usage {e:?}"
    );
    let Some(aes) = aes else {
        return;
    };
    let k = words(&aes);
    assert!(
        k.contains(&"encrypt".to_string())
            && k.contains(&"decrypt".to_string())
            && !k.contains(&"sign".to_string())
            && !k.contains(&"wrap".to_string()),
        "AES key usage {k:?}"
    );
    let aes_obj = private_object(&objects, &aes);
    assert!(
        aes_obj.header.starts_with("Secret Key Object; AES"),
        "{aes_obj:?}"
    );
    assert!(
        aes_obj.field("Access").contains("never extractable"),
        "{aes_obj:?}"
    );
}

#[tokio::test]
async fn aes_blobs_round_trip_and_refuse_every_bit_flip() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let mut keys = d.keys();
    let key = create_key(
        &mut keys,
        KeySpec::Aes256,
        KeyUsage::EncryptDecrypt,
        "vault",
    )
    .await;
    let other = create_key(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await;
    let sym = EncryptionAlgorithm::SymmetricDefault;
    let unspecified = EncryptionAlgorithm::Unspecified;
    for (msg, aad) in [
        (&b"a password"[..], &b""[..]),
        (b"a token", b"tenant=7"),
        (&[0u8; 4096][..], b"x"),
    ] {
        let (enc, _) = expect_ok(
            encrypt(&mut keys, "alias/vault", unspecified, msg, aad).await,
            "Encrypt",
        );
        let blob = enc.ciphertext;
        assert_eq!(enc.encryption_algorithm, sym as i32);
        assert_eq!(blob.len(), 21 + 12 + msg.len() + 16, "blob layout");
        assert_eq!(&blob[..5], b"HSMD\x01");
        assert_eq!(
            &blob[5..21],
            uuid::Uuid::parse_str(&key).unwrap().as_bytes()
        );
        for named in ["", key.as_str(), "alias/vault"] {
            let pt = plaintext_of(
                decrypt(&mut keys, named, unspecified, &blob, aad).await,
                "Decrypt blob",
            );
            assert_eq!(pt, msg);
        }
        // Another or missing AAD.
        let wrong: &[u8] = if aad.is_empty() { b"extra" } else { b"" };
        let r = decrypt(&mut keys, "", sym, &blob, wrong).await;
        d.assert_refused(
            r,
            &key_method("Decrypt"),
            Code::InvalidArgument,
            "DECRYPTION_FAILED",
        );
    }
    // Every single-bit flip and every truncation of a blob is refused with
    // INVALID_ARGUMENT, and never answers with a plaintext.
    let (enc, _) = expect_ok(
        encrypt(&mut keys, &key, sym, b"8 bytes!", b"ctx").await,
        "Encrypt",
    );
    let blob = enc.ciphertext;
    let mut refused = 0;
    for bit in 0..blob.len() * 8 {
        let mut bad = blob.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = decrypt(&mut keys, "", unspecified, &bad, b"ctx").await;
        match r {
            Ok(_) => panic!("bit {bit} flipped: the blob still decrypted"),
            Err(s) => {
                assert_eq!(
                    s.code(),
                    Code::InvalidArgument,
                    "bit {bit}: {}",
                    describe(&s)
                );
                refused += 1;
            }
        }
    }
    for len in 0..blob.len() {
        let r = decrypt(&mut keys, "", unspecified, &blob[..len], b"ctx").await;
        let s = r
            .err()
            .unwrap_or_else(|| panic!("truncated to {len}: decrypted"));
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "len {len}: {}",
            describe(&s)
        );
        let reason = hsmd_e2e::reason_of(&s).unwrap_or_default();
        assert!(
            reason == "INVALID_CIPHERTEXT" || reason == "DECRYPTION_FAILED",
            "len {len}: {reason}"
        );
    }
    assert_eq!(refused, blob.len() * 8);
    // The blob of one key given with another key's id.
    let r = decrypt(&mut keys, &other, sym, &blob, b"ctx").await;
    d.assert_refused(
        r,
        &key_method("Decrypt"),
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
    );
    // Limits.
    let r = encrypt(&mut keys, &key, sym, &[0; 4097], b"").await;
    d.assert_refused(
        r,
        &key_method("Encrypt"),
        Code::InvalidArgument,
        "PLAINTEXT_TOO_LARGE",
    );
    let r = encrypt(&mut keys, &key, sym, b"", b"").await;
    expect_error(
        r,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "empty plaintext",
    );
    // A disabled key: the blob names it, and it is refused.
    keys.disable_key(hsmd_e2e::v1::DisableKeyRequest {
        key_id: key.clone(),
    })
    .await
    .expect("disable");
    let r = decrypt(&mut keys, "", unspecified, &blob, b"ctx").await;
    let rec = d.assert_refused(
        r,
        &key_method("Decrypt"),
        Code::FailedPrecondition,
        "KEY_DISABLED",
    );
    assert_eq!(rec.str("key_id"), key, "the refusal names the blob's key");
    keys.enable_key(hsmd_e2e::v1::EnableKeyRequest {
        key_id: key.clone(),
    })
    .await
    .expect("enable");
    let pt = plaintext_of(
        decrypt(&mut keys, "", unspecified, &blob, b"ctx").await,
        "after enable",
    );
    assert_eq!(pt, b"8 bytes!");
}

#[tokio::test]
async fn data_keys_decrypt_to_themselves_and_never_reach_the_logs() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let mut keys = d.keys();
    let master = create_key(
        &mut keys,
        KeySpec::Aes256,
        KeyUsage::EncryptDecrypt,
        "master",
    )
    .await;
    let rsa = create_key(&mut keys, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "").await;
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for (spec, len) in [(KeySpec::Aes256, 32), (KeySpec::Aes128, 16)] {
        let (mut dk, rid) = expect_ok(
            keys.generate_data_key(GenerateDataKeyRequest {
                key_id: "alias/master".into(),
                key_spec: spec as i32,
                aad: Vec::new(),
            })
            .await,
            "GenerateDataKey",
        );
        let plaintext = std::mem::take(&mut dk.plaintext);
        assert_eq!(plaintext.len(), len, "{spec:?}");
        assert_eq!(dk.key_id, master);
        let back = plaintext_of(
            decrypt(
                &mut keys,
                "",
                EncryptionAlgorithm::Unspecified,
                &dk.ciphertext_blob,
                b"",
            )
            .await,
            "Decrypt data key",
        );
        assert_eq!(back, plaintext, "{spec:?}: Decrypt(blob) is the data key");
        let rec = d.assert_audited(&rid, &key_method("GenerateDataKey"), "ok", "OK", "");
        assert_eq!(rec.str("algorithm"), spec_name(spec));
        assert_eq!(
            rec.str("input_sha256"),
            hex::encode(Sha256::digest(&dk.ciphertext_blob))
        );
        secrets.push(plaintext);
    }
    let (blob_only, rid) = expect_ok(
        keys.generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: master.clone(),
            key_spec: 0,
            aad: b"file=1".to_vec(),
        })
        .await,
        "GenerateDataKeyWithoutPlaintext",
    );
    d.assert_audited(
        &rid,
        &key_method("GenerateDataKeyWithoutPlaintext"),
        "ok",
        "OK",
        "",
    );
    let key = plaintext_of(
        decrypt(
            &mut keys,
            "",
            EncryptionAlgorithm::Unspecified,
            &blob_only.ciphertext_blob,
            b"file=1",
        )
        .await,
        "Decrypt blob-only data key",
    );
    assert_eq!(key.len(), 32);
    secrets.push(key);
    // Encrypt/Decrypt plaintexts are secrets too.
    let small = b"correct horse battery staple".to_vec();
    let (enc, rid) = expect_ok(
        encrypt(
            &mut keys,
            &master,
            EncryptionAlgorithm::SymmetricDefault,
            &small,
            b"",
        )
        .await,
        "Encrypt",
    );
    let rec = d.assert_audited(&rid, &key_method("Encrypt"), "ok", "OK", "");
    assert_eq!(
        rec.str("input_sha256"),
        hex::encode(Sha256::digest(&enc.ciphertext)),
        "Encrypt records the hash of its ciphertext"
    );
    let r = decrypt(
        &mut keys,
        "",
        EncryptionAlgorithm::Unspecified,
        &enc.ciphertext,
        b"",
    )
    .await;
    assert_eq!(plaintext_of(r, "Decrypt"), small);
    secrets.push(small);
    // Refusals.
    let r = keys
        .generate_data_key(GenerateDataKeyRequest {
            key_id: master.clone(),
            key_spec: KeySpec::EcP256 as i32,
            aad: Vec::new(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("GenerateDataKey"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let r = keys
        .generate_data_key(GenerateDataKeyRequest {
            key_id: rsa.clone(),
            key_spec: 0,
            aad: Vec::new(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("GenerateDataKey"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );

    // Neither the audit log nor the daemon's own log holds any secret, in any spelling.
    let audit = d.audit_text();
    let logs = format!("{}{}", d.stdout_text(), d.stderr_text());
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in &secrets {
        for spelling in [
            hex::encode(secret),
            hex::encode_upper(secret),
            b64.encode(secret),
            hex::encode(Sha256::digest(secret)),
        ] {
            assert!(!audit.contains(&spelling), "audit log holds {spelling}");
            assert!(!logs.contains(&spelling), "daemon log holds {spelling}");
        }
    }
    for method in [
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
    ] {
        let m = key_method(method);
        assert!(
            d.audit_lines().iter().any(|l| l.str("method") == m),
            "no audit record of {method}"
        );
    }
}

fn spec_name(spec: KeySpec) -> &'static str {
    spec.as_str_name()
}

#[tokio::test]
async fn token_info_shows_the_path_of_each_algorithm() {
    let d = Daemon::start().await;
    let out = d.hsmctl_ok(["-o", "json", "token", "info"]);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let algorithms = info["encryption_algorithms"].to_string();
    for a in ["RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"] {
        assert!(algorithms.contains(a), "{info}");
    }
    assert_eq!(
        algorithms.contains("SYMMETRIC_DEFAULT"),
        d.offers(Need::Aes256).await,
        "{info}"
    );
    assert!(!algorithms.contains("PKCS1"), "{info}");
    let paths = info["algorithm_paths"].as_array().expect("paths");
    let path = |a: &str| {
        paths
            .iter()
            .find(|p| p["algorithm"] == a)
            .unwrap_or_else(|| panic!("no path for {a}: {info}"))
            .clone()
    };
    let p256 = path("RSAES_OAEP_SHA_256");
    assert_eq!(p256["offered"], true);
    let text = p256["path"].as_str().unwrap_or_default();
    assert!(
        text.contains("CKM_RSA_X_509") || text.contains("CKM_RSA_PKCS_OAEP (SHA-256"),
        "{text}"
    );
    assert!(
        path("RSAES_OAEP_SHA_1")["path"]
            .to_string()
            .contains("CKM_RSA_PKCS_OAEP")
    );
    assert_eq!(path("RSAES_PKCS1_V1_5")["offered"], false);
    let table = d.hsmctl_ok(["token", "info"]);
    assert!(table.contains("ENCRYPTION ALGORITHM"), "{table}");
    assert!(table.contains("RSAES_OAEP_SHA_256"), "{table}");
    // The daemon logged the same paths at start-up.
    assert!(
        d.stderr_text().contains("encryption path") || d.stdout_text().contains("encryption path")
    );
}
