//! Bring your own key end to end (issue 5): material generated and wrapped with the
//! openssl CLI only is imported through GetParametersForImport and ImportKeyMaterial;
//! the imported keys sign (openssl verifies with the original public key), decrypt, and
//! show in `pkcs11-tool` as sensitive, non-extractable objects; concurrent imports into
//! one key make one set of objects; Ed25519 material is refused clearly on SoftHSM2;
//! keys made in the token take no material; the sweep destroys wrapping keys no import
//! token names; and the *_SHA_256 algorithms follow the config switch. Each refusal
//! (expired, superseded or foreign token, altered bytes, wrong spec, other material,
//! valid_to in the past) with its own reason and audit record, leaving the key as it
//! was, is in `import_refusals.rs`, and material expiring at its valid_to in
//! `import_expiry.rs` (both on a manual clock, each in a test binary of its own).

use std::time::{Duration, Instant};

use hsmd_e2e::{
    Daemon, Need,
    algorithms::openssl_verify,
    configured::with_admin_policy,
    crypt::{decrypt, encrypt, plaintext_of},
    expect_ok,
    import::{
        OpensslKey, create_external, import_material, openssl_genpkey, openssl_kcv, openssl_rand,
        openssl_wrap, parameters,
    },
    keys::{describe_key, unix_now},
    status::{describe, key_method},
    tools::write_file,
    v1::{
        DeleteImportedKeyMaterialRequest, EncryptionAlgorithm, GetParametersForImportRequest,
        GetPublicKeyRequest, ImportKeyMaterialRequest, KeySpec, KeyState, KeyUsage, MessageType,
        SignRequest, SigningAlgorithm, WrappingAlgorithm,
    },
};
use tonic::Code;

/// Imported private/secret objects: sensitive and not extractable (PKCS#11 reports
/// them as neither "always sensitive" nor "never extractable", which is right for
/// material that existed outside the token).
fn assert_protected(d: &Daemon, key: &str, pair: bool) {
    let objs = d.objects_of(key);
    let private: Vec<_> = objs.iter().filter(|o| !o.is_public_key()).collect();
    assert_eq!(
        private.len(),
        1,
        "{key}: one private/secret object: {objs:#?}"
    );
    let access = private[0].words("Access");
    assert!(
        access.iter().any(|w| w == "sensitive"),
        "{key}: not sensitive: {access:?}"
    );
    assert!(
        !access.iter().any(|w| w == "extractable"),
        "{key}: CKA_EXTRACTABLE is true: {access:?}"
    );
    let public = objs.iter().filter(|o| o.is_public_key()).count();
    assert_eq!(
        public,
        usize::from(pair),
        "{key}: public objects: {objs:#?}"
    );
    // Nothing else of the import is left as a token object: no ephemeral key, and the
    // wrapping keys carry their own label.
    let secret_unlabelled = d
        .token_objects(true)
        .into_iter()
        .filter(|o| o.header.starts_with("Secret Key Object") && o.field("label").is_empty())
        .count();
    assert_eq!(
        secret_unlabelled, 0,
        "an unlabelled secret key (ephemeral?) is in the token"
    );
}

/// openssl makes the key, openssl wraps it, hsmd imports it, hsmd signs, openssl
/// verifies with the original public key.
async fn import_and_sign(spec: KeySpec, alg: SigningAlgorithm) {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, spec, KeyUsage::SignVerify).await;
    let before = describe_key(&d, &key).await;
    assert_eq!(before.state, KeyState::PendingImport as i32, "{spec:?}");
    assert!(d.objects_of(&key).is_empty(), "{spec:?}: no material yet");
    let material: OpensslKey = openssl_genpkey(&dir, "mine", spec);
    let (p, wrap_pem) =
        parameters(&mut keys, &dir, &key, WrappingAlgorithm::RsaAesKeyWrapSha1).await;
    assert_eq!(
        p.wrapping_algorithm,
        WrappingAlgorithm::RsaAesKeyWrapSha1 as i32
    );
    let wrapped = openssl_wrap(
        &dir,
        &wrap_pem,
        WrappingAlgorithm::RsaAesKeyWrapSha1,
        &material.pkcs8_der,
    );
    let (r, rid) = expect_ok(
        import_material(&d, &key, &p.import_token, wrapped).await,
        "ImportKeyMaterial",
    );
    let meta = r.key.expect("metadata");
    assert_eq!(meta.state, KeyState::Enabled as i32, "{spec:?}");
    assert!(meta.import_time.is_some(), "{spec:?}: import_time");
    assert!(meta.valid_to.is_none(), "{spec:?}: no expiry asked");
    d.assert_audited(&rid, &key_method("ImportKeyMaterial"), "ok", "OK", "");
    let (public, _) = expect_ok(
        keys.get_public_key(GetPublicKeyRequest {
            key_id: key.clone(),
        })
        .await,
        "GetPublicKey",
    );
    assert_eq!(
        public.public_key_der, material.public_der,
        "{spec:?}: the original public key"
    );
    let message = b"signed by an imported key".to_vec();
    let (sig, _) = expect_ok(
        keys.sign(SignRequest {
            key_id: key.clone(),
            algorithm: alg as i32,
            message_type: MessageType::Raw as i32,
            message: message.clone(),
        })
        .await,
        "Sign",
    );
    let msg = write_file(&dir, "msg", &message);
    let sig_path = write_file(&dir, "sig", &sig.signature);
    assert!(
        openssl_verify(alg, &material.public_pem, &msg, &sig_path),
        "{spec:?}: openssl rejects the imported key's signature"
    );
    assert_protected(&d, &key, true);
}

#[tokio::test]
async fn imported_rsa_key_signs_and_openssl_verifies() {
    import_and_sign(KeySpec::Rsa2048, SigningAlgorithm::RsaPssSha256).await;
}

#[tokio::test]
async fn imported_ec_p256_key_signs_and_openssl_verifies() {
    import_and_sign(KeySpec::EcP256, SigningAlgorithm::EcdsaSha256).await;
}

#[tokio::test]
async fn imported_ec_p384_key_signs_and_openssl_verifies() {
    import_and_sign(KeySpec::EcP384, SigningAlgorithm::EcdsaSha384).await;
}

/// Ed25519: SoftHSM2 2.6 cannot unwrap Ed25519 private keys (C_UnwrapKey answers
/// CKR_FUNCTION_FAILED for CKK_EC_EDWARDS): the import is refused with a message that
/// says so, audited, and leaves nothing in the token. (On a token that can, the public
/// key comes with the material and is proven by a challenge signed in the token.)
#[tokio::test]
async fn ed25519_import_is_refused_clearly_on_softhsm() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::Ed25519, KeyUsage::SignVerify).await;
    let material = openssl_genpkey(&dir, "ed", KeySpec::Ed25519);
    let alg = WrappingAlgorithm::RsaAesKeyWrapSha1;
    let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &material.pkcs8_der);
    let r = keys
        .import_key_material(ImportKeyMaterialRequest {
            key_id: key.clone(),
            import_token: p.import_token.clone(),
            encrypted_key_material: wrapped,
            public_key_der: material.public_der.clone(),
            ..Default::default()
        })
        .await;
    let message = r.as_ref().err().map(describe).unwrap_or_default();
    assert!(message.contains("Ed25519"), "{message}");
    d.assert_refused(
        r,
        &key_method("ImportKeyMaterial"),
        Code::InvalidArgument,
        "KEY_MATERIAL_SPEC_MISMATCH",
    );
    assert_eq!(
        describe_key(&d, &key).await.state,
        KeyState::PendingImport as i32
    );
    assert!(d.objects_of(&key).is_empty(), "nothing left in the token");
}

/// AES-256 by RSAES_OAEP_SHA_1 and AES-128 by RSA_AES_KEY_WRAP_SHA_1: the key check
/// value equals openssl's from the original bytes, and the key encrypts and decrypts.
#[tokio::test]
async fn imported_aes_keys_have_openssl_check_values_and_decrypt() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    for (spec, len, alg) in [
        (KeySpec::Aes256, 32, WrappingAlgorithm::RsaesOaepSha1),
        (KeySpec::Aes128, 16, WrappingAlgorithm::RsaAesKeyWrapSha1),
    ] {
        let key = create_external(&mut keys, spec, KeyUsage::EncryptDecrypt).await;
        let raw = openssl_rand(&dir, &format!("aes{len}"), len);
        let raw_path = dir.join(format!("aes{len}"));
        let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
        let wrapped = openssl_wrap(&dir, &pem, alg, &raw_path);
        let (r, _) = expect_ok(
            import_material(&d, &key, &p.import_token, wrapped).await,
            "ImportKeyMaterial",
        );
        let meta = r.key.expect("metadata");
        assert_eq!(meta.state, KeyState::Enabled as i32);
        assert_eq!(
            meta.key_check_value,
            openssl_kcv(&dir, &raw),
            "{spec:?}: the key check value computed in the token matches openssl's"
        );
        let ct = expect_ok(
            encrypt(
                &mut keys,
                &key,
                EncryptionAlgorithm::SymmetricDefault,
                b"hello import",
                b"",
            )
            .await,
            "Encrypt",
        )
        .0
        .ciphertext;
        let pt = plaintext_of(
            decrypt(
                &mut keys,
                "",
                EncryptionAlgorithm::SymmetricDefault,
                &ct,
                b"",
            )
            .await,
            "Decrypt",
        );
        assert_eq!(pt, b"hello import");
        assert_protected(&d, &key, false);
    }
}

/// An EXTERNAL key scheduled for deletion before it got material goes back to
/// PENDING_IMPORT when the deletion is cancelled (not DISABLED, which EnableKey would turn
/// into an ENABLED key without material), and still takes its material.
#[tokio::test]
async fn cancelled_deletion_of_a_key_without_material_waits_for_import() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    expect_ok(
        keys.schedule_key_deletion(hsmd_e2e::v1::ScheduleKeyDeletionRequest {
            key_id: key.clone(),
            pending_window_days: 7,
        })
        .await,
        "ScheduleKeyDeletion",
    );
    expect_ok(
        keys.cancel_key_deletion(hsmd_e2e::v1::CancelKeyDeletionRequest {
            key_id: key.clone(),
        })
        .await,
        "CancelKeyDeletion",
    );
    assert_eq!(
        describe_key(&d, &key).await.state,
        KeyState::PendingImport as i32
    );
    let r = keys
        .enable_key(hsmd_e2e::v1::EnableKeyRequest {
            key_id: key.clone(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("EnableKey"),
        Code::FailedPrecondition,
        "INVALID_KEY_STATE",
    );
    openssl_rand(&dir, "aes", 32);
    let alg = WrappingAlgorithm::RsaesOaepSha1;
    let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &dir.join("aes"));
    expect_ok(
        import_material(&d, &key, &p.import_token, wrapped).await,
        "ImportKeyMaterial",
    );
}

/// Keys generated in the token take no imported material.
#[tokio::test]
async fn hsm_keys_take_no_material() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let mut keys = d.keys();
    let key =
        hsmd_e2e::crypt::create_key(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await;
    let r = keys
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await;
    let message = r.as_ref().err().map(describe).unwrap_or_default();
    assert!(message.contains("origin HSM"), "{message}");
    d.assert_refused(
        r,
        &key_method("GetParametersForImport"),
        Code::FailedPrecondition,
        "INVALID_KEY_STATE",
    );
    let r = keys
        .delete_imported_key_material(DeleteImportedKeyMaterialRequest {
            key_id: key.clone(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("DeleteImportedKeyMaterial"),
        Code::FailedPrecondition,
        "INVALID_KEY_STATE",
    );
}

/// On SoftHSM2 (no OAEP-SHA-256 in the token) the *_SHA_256 algorithms are refused by
/// default, naming the SHA-1 ones; the default pick is RSA_AES_KEY_WRAP_SHA_1.
#[tokio::test]
async fn sha256_wrapping_is_refused_by_default() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    for alg in [
        WrappingAlgorithm::RsaesOaepSha256,
        WrappingAlgorithm::RsaAesKeyWrapSha256,
    ] {
        let r = keys
            .get_parameters_for_import(GetParametersForImportRequest {
                key_id: key.clone(),
                wrapping_algorithm: alg as i32,
                ..Default::default()
            })
            .await;
        let status = r.as_ref().err().map(describe).unwrap_or_default();
        assert!(
            status.contains("_SHA_1"),
            "{alg:?}: the refusal names the SHA-1 algorithms: {status}"
        );
        assert!(status.contains("allow_host_oaep_sha256"), "{status}");
        d.assert_refused(
            r,
            &key_method("GetParametersForImport"),
            Code::InvalidArgument,
            "ALGORITHM_NOT_ALLOWED",
        );
    }
    let (p, _) = parameters(&mut keys, &dir, &key, WrappingAlgorithm::Unspecified).await;
    assert_eq!(
        p.wrapping_algorithm,
        WrappingAlgorithm::RsaAesKeyWrapSha1 as i32
    );
    assert_eq!(p.wrapping_key_spec, KeySpec::Rsa2048 as i32);
    let expiry = p.parameters_valid_to.expect("expiry").seconds;
    let now = unix_now();
    assert!(
        (expiry - now - 86_400).abs() < 120,
        "tokens live 24 hours: {expiry} vs {now}"
    );
}

/// With `import.allow_host_oaep_sha256 = true` both *_SHA_256 algorithms import.
#[tokio::test]
async fn sha256_wrapping_works_with_the_host_decode_switch() {
    let (d, _) = Daemon::start_configured(&with_admin_policy(
        "[import]\nallow_host_oaep_sha256 = true\n",
    ))
    .await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let aes = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    let raw = openssl_rand(&dir, "aes", 32);
    let alg = WrappingAlgorithm::RsaesOaepSha256;
    let (p, pem) = parameters(&mut keys, &dir, &aes, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &dir.join("aes"));
    let (r, _) = expect_ok(
        import_material(&d, &aes, &p.import_token, wrapped).await,
        "RSAES_OAEP_SHA_256",
    );
    assert_eq!(r.key.expect("key").key_check_value, openssl_kcv(&dir, &raw));

    let ec = create_external(&mut keys, KeySpec::EcP256, KeyUsage::SignVerify).await;
    let material = openssl_genpkey(&dir, "ec", KeySpec::EcP256);
    let alg = WrappingAlgorithm::RsaAesKeyWrapSha256;
    let (p, pem) = parameters(&mut keys, &dir, &ec, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &material.pkcs8_der);
    // A SHA-1 wrapping of the ephemeral key does not unwrap as SHA-256.
    let wrong = openssl_wrap(
        &dir,
        &pem,
        WrappingAlgorithm::RsaAesKeyWrapSha1,
        &material.pkcs8_der,
    );
    d.assert_refused(
        import_material(&d, &ec, &p.import_token, wrong).await,
        &key_method("ImportKeyMaterial"),
        Code::InvalidArgument,
        "INVALID_WRAPPED_KEY_MATERIAL",
    );
    expect_ok(
        import_material(&d, &ec, &p.import_token, wrapped).await,
        "RSA_AES_KEY_WRAP_SHA_256",
    );
    let (public, _) = expect_ok(
        keys.get_public_key(GetPublicKeyRequest { key_id: ec.clone() })
            .await,
        "GetPublicKey",
    );
    assert_eq!(public.public_key_der, material.public_der);
}

/// Concurrent imports into one key: exactly one succeeds, the others are refused
/// (INVALID_KEY_STATE: the key already holds material) and the token holds exactly one
/// private and one public object for the key.
#[tokio::test]
async fn concurrent_imports_into_one_key_make_one_set_of_objects() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::EcP256, KeyUsage::SignVerify).await;
    let material = openssl_genpkey(&dir, "ec", KeySpec::EcP256);
    let alg = WrappingAlgorithm::RsaAesKeyWrapSha1;
    let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let wrapped = openssl_wrap(&dir, &pem, alg, &material.pkcs8_der);
            let mut keys = d.keys();
            let req = ImportKeyMaterialRequest {
                key_id: key.clone(),
                import_token: p.import_token.clone(),
                encrypted_key_material: wrapped,
                ..Default::default()
            };
            tokio::spawn(async move { keys.import_key_material(req).await })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.expect("task") {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(
                hsmd_e2e::reason_of(&s).as_deref(),
                Some("INVALID_KEY_STATE"),
                "{}",
                describe(&s)
            ),
        }
    }
    assert_eq!(ok, 1, "exactly one import wins");
    let objs = d.objects_of(&key);
    assert_eq!(
        objs.iter().filter(|o| o.is_private_key()).count(),
        1,
        "{objs:#?}"
    );
    assert_eq!(
        objs.iter().filter(|o| o.is_public_key()).count(),
        1,
        "{objs:#?}"
    );
}

/// An imported RSA ENCRYPT_DECRYPT key decrypts what openssl encrypts with the original
/// public key (hsmd checks the pair in the token at import: an OAEP round trip).
#[tokio::test]
async fn imported_rsa_key_decrypts_openssl_ciphertexts() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let key = create_external(&mut keys, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await;
    let material = openssl_genpkey(&dir, "rsa", KeySpec::Rsa2048);
    let alg = WrappingAlgorithm::RsaAesKeyWrapSha1;
    let (p, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &material.pkcs8_der);
    expect_ok(
        import_material(&d, &key, &p.import_token, wrapped).await,
        "ImportKeyMaterial",
    );
    let secret = b"imported keys decrypt too";
    for (alg, md) in [
        (EncryptionAlgorithm::RsaesOaepSha1, "sha1"),
        (EncryptionAlgorithm::RsaesOaepSha256, "sha256"),
    ] {
        let ct = hsmd_e2e::crypt::openssl_oaep_encrypt(&dir, &material.public_pem, md, secret);
        let pt = plaintext_of(decrypt(&mut keys, &key, alg, &ct, b"").await, md);
        assert_eq!(pt, secret, "{alg:?}");
    }
    assert_protected(&d, &key, true);
}

/// A wrapping key that no import token names (a crash between making the key and
/// writing its token's row leaves one) is destroyed by the sweep once it has been seen
/// for a whole token lifetime, and not before (a replica may be between those steps).
#[tokio::test]
async fn the_sweep_destroys_wrapping_keys_no_import_token_names() {
    const LIFETIME: u64 = 5;
    let (mut d, _) = Daemon::start_configured(&with_admin_policy(&format!(
        "[import]\ntoken_lifetime_secs = {LIFETIME}\n[lifecycle]\nsweep_interval_secs = 1\n"
    )))
    .await;
    if !d.offers(Need::Import).await {
        return;
    }
    d.kill_hard();
    let orphan = hex::encode([b"hsmd-wrap:".as_slice(), uuid::Uuid::new_v4().as_bytes()].concat());
    let made = d.pkcs11_tool(
        true,
        &[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            &orphan,
            "--label",
            "hsmd-wrapping-key/orphan",
        ],
    );
    assert!(
        made.success(),
        "pkcs11-tool --keypairgen\n{}",
        made.describe()
    );
    let present = |d: &Daemon| {
        d.token_objects(true)
            .iter()
            .any(|o| o.is_private_key() && o.field("ID") == orphan)
    };
    assert!(present(&d), "the orphan is in the token");
    let started = Instant::now();
    d.start_again().await;
    // Sweeps run every second; the first sighting is at or after the start, so for the
    // first LIFETIME seconds the key must stay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(LIFETIME) || present(&d),
        "destroyed before a token lifetime had passed"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while present(&d) {
        assert!(
            Instant::now() < deadline,
            "the orphan wrapping key is still in the token 90 s later"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(LIFETIME - 1),
        "destroyed after {:?}, before a token lifetime",
        started.elapsed()
    );
}
