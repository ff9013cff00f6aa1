//! Refused imports (issue 5): an expired, superseded or foreign import token, bytes that
//! are not a token, altered or truncated wrapped bytes, material of the wrong spec,
//! valid_to in the past, a second import, and other material after
//! DeleteImportedKeyMaterial each have their own reason and audit record and leave the
//! key as it was; then the right material still imports, and imports again after its
//! deletion.
//!
//! Nobody waits for an import token to expire: the daemon runs in this process on a
//! manual clock ([`InProcess`]) with the default token lifetime, and the test moves the
//! clock past it. An in-process daemon is alone in its test binary: this file holds one
//! test.

use hsmd_e2e::{
    InProcess, Need, expect_ok,
    import::{
        create_external, import_material, openssl_genpkey, openssl_kcv, openssl_rand, openssl_wrap,
        parameters,
    },
    inprocess::DAY,
    keys::describe_key,
    status::{describe, key_method},
    v1::{
        DeleteImportedKeyMaterialRequest, GetParametersForImportRequest, ImportKeyMaterialRequest,
        KeySpec, KeyState, KeyUsage, WrappingAlgorithm,
    },
};
use tonic::Code;

/// An import token's lifetime in the daemon's seconds: the default
/// (`[import] token_lifetime_secs`, 24 hours).
const TOKEN_LIFETIME: i64 = DAY;

/// Every refusal has its own reason and audit record, and leaves the key PENDING_IMPORT
/// with nothing in the token; then the right material still imports.
#[tokio::test(flavor = "multi_thread")]
async fn refused_imports_leave_the_key_as_it_was() {
    let d = InProcess::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();
    let mut keys = d.keys();
    let method = key_method("ImportKeyMaterial");
    let key = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    let other = create_external(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
    let raw_path = dir.join("aes");
    let raw = openssl_rand(&dir, "aes", 32);
    let alg = WrappingAlgorithm::RsaesOaepSha1;
    let unchanged = |what: &'static str| {
        let d = &d;
        let key = key.clone();
        async move {
            assert_eq!(
                describe_key(d, &key).await.state,
                KeyState::PendingImport as i32,
                "{what}: the key is still PENDING_IMPORT"
            );
            assert!(
                d.objects_of(&key).is_empty(),
                "{what}: nothing left in the token"
            );
        }
    };

    // Expired: the daemon's clock moves past the token's lifetime.
    let (old, pem) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped = openssl_wrap(&dir, &pem, alg, &raw_path);
    d.clock().advance(TOKEN_LIFETIME + 1);
    let rec = d.assert_refused(
        import_material(&d, &key, &old.import_token, wrapped).await,
        &method,
        Code::FailedPrecondition,
        "IMPORT_TOKEN_EXPIRED",
    );
    assert_eq!(rec.str("key_id"), key);
    unchanged("expired token").await;

    // Superseded: a newer GetParametersForImport.
    let (first, pem1) = parameters(&mut keys, &dir, &key, alg).await;
    let wrapped1 = openssl_wrap(&dir, &pem1, alg, &raw_path);
    let (newest, pem2) = parameters(&mut keys, &dir, &key, alg).await;
    d.assert_refused(
        import_material(&d, &key, &first.import_token, wrapped1).await,
        &method,
        Code::FailedPrecondition,
        "IMPORT_TOKEN_SUPERSEDED",
    );
    unchanged("superseded token").await;
    let wrapped = openssl_wrap(&dir, &pem2, alg, &raw_path);

    // The token of another key, and bytes that are not a token.
    let (theirs, _) = parameters(&mut keys, &dir, &other, alg).await;
    d.assert_refused(
        import_material(&d, &key, &theirs.import_token, wrapped.clone()).await,
        &method,
        Code::InvalidArgument,
        "IMPORT_TOKEN_WRONG_KEY",
    );
    d.assert_refused(
        import_material(&d, &key, b"not a token", wrapped.clone()).await,
        &method,
        Code::InvalidArgument,
        "INVALID_IMPORT_TOKEN",
    );
    unchanged("foreign token").await;

    // Altered wrapped bytes (one bit), and a truncated blob.
    let mut tampered = wrapped.clone();
    tampered[40] ^= 0x01;
    d.assert_refused(
        import_material(&d, &key, &newest.import_token, tampered).await,
        &method,
        Code::InvalidArgument,
        "INVALID_WRAPPED_KEY_MATERIAL",
    );
    d.assert_refused(
        import_material(&d, &key, &newest.import_token, wrapped[..100].to_vec()).await,
        &method,
        Code::InvalidArgument,
        "INVALID_WRAPPED_KEY_MATERIAL",
    );
    unchanged("altered bytes").await;

    // 16 bytes into an AES_256 key.
    let short_path = dir.join("aes16");
    openssl_rand(&dir, "aes16", 16);
    let short = openssl_wrap(&dir, &pem2, alg, &short_path);
    let r = import_material(&d, &key, &newest.import_token, short).await;
    let message = r.as_ref().err().map(describe).unwrap_or_default();
    assert!(message.contains("16-byte"), "the error says why: {message}");
    d.assert_refused(
        r,
        &method,
        Code::InvalidArgument,
        "KEY_MATERIAL_SPEC_MISMATCH",
    );
    unchanged("wrong spec").await;

    // valid_to in the past.
    let r = keys
        .import_key_material(ImportKeyMaterialRequest {
            key_id: key.clone(),
            import_token: newest.import_token.clone(),
            encrypted_key_material: wrapped.clone(),
            valid_to: Some(prost_types::Timestamp {
                seconds: 1_000_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    d.assert_refused(r, &method, Code::InvalidArgument, "INVALID_VALID_TO");
    unchanged("valid_to in the past").await;

    // The right material with the newest token.
    let (r, _) = expect_ok(
        import_material(&d, &key, &newest.import_token, wrapped.clone()).await,
        "import",
    );
    let kcv = r.key.expect("key").key_check_value;
    assert_eq!(kcv, openssl_kcv(&dir, &raw));

    // Re-import: only after deleting, and only the same material.
    d.assert_refused(
        import_material(&d, &key, &newest.import_token, wrapped.clone()).await,
        &method,
        Code::FailedPrecondition,
        "INVALID_KEY_STATE",
    );
    let (gone, rid) = expect_ok(
        keys.delete_imported_key_material(DeleteImportedKeyMaterialRequest {
            key_id: key.clone(),
        })
        .await,
        "DeleteImportedKeyMaterial",
    );
    d.assert_audited(
        &rid,
        &key_method("DeleteImportedKeyMaterial"),
        "ok",
        "OK",
        "",
    );
    assert_eq!(gone.key.expect("key").state, KeyState::PendingImport as i32);
    assert!(
        d.objects_of(&key).is_empty(),
        "material destroyed in the token"
    );
    let different_path = dir.join("aes-other");
    openssl_rand(&dir, "aes-other", 32);
    let different = openssl_wrap(&dir, &pem2, alg, &different_path);
    d.assert_refused(
        import_material(&d, &key, &newest.import_token, different).await,
        &method,
        Code::InvalidArgument,
        "KEY_MATERIAL_MISMATCH",
    );
    unchanged("different material").await;
    d.clock().advance(TOKEN_LIFETIME + 1);
    let (again, pem3) = parameters(&mut keys, &dir, &key, alg).await;
    let same = openssl_wrap(&dir, &pem3, alg, &raw_path);
    let (r, _) = expect_ok(
        import_material(&d, &key, &again.import_token, same).await,
        "re-import",
    );
    assert_eq!(r.key.expect("key").key_check_value, kcv);

    // Key-pair specs: an RSA-3072 key into an RSA_2048 key, and PKCS#8 into RSAES_OAEP.
    let rsa = create_external(&mut keys, KeySpec::Rsa2048, KeyUsage::SignVerify).await;
    let big = openssl_genpkey(&dir, "big", KeySpec::Rsa3072);
    let kw = WrappingAlgorithm::RsaAesKeyWrapSha1;
    let (p, pem) = parameters(&mut keys, &dir, &rsa, kw).await;
    let wrapped = openssl_wrap(&dir, &pem, kw, &big.pkcs8_der);
    let r = import_material(&d, &rsa, &p.import_token, wrapped).await;
    let message = r.as_ref().err().map(describe).unwrap_or_default();
    assert!(message.contains("RSA-3072"), "{message}");
    d.assert_refused(
        r,
        &method,
        Code::InvalidArgument,
        "KEY_MATERIAL_SPEC_MISMATCH",
    );
    assert!(
        d.objects_of(&rsa).is_empty(),
        "nothing left of the RSA-3072 key"
    );
    let ec = openssl_genpkey(&dir, "ec", KeySpec::EcP256);
    let wrapped = openssl_wrap(&dir, &pem, kw, &ec.pkcs8_der);
    d.assert_refused(
        import_material(&d, &rsa, &p.import_token, wrapped).await,
        &method,
        Code::InvalidArgument,
        "KEY_MATERIAL_SPEC_MISMATCH",
    );
    assert!(d.objects_of(&rsa).is_empty(), "nothing left of the EC key");
    let r = keys
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: rsa.clone(),
            wrapping_algorithm: WrappingAlgorithm::RsaesOaepSha1 as i32,
            ..Default::default()
        })
        .await;
    d.assert_refused(
        r,
        &key_method("GetParametersForImport"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
}
