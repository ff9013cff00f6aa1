//! Every bad input of issue 2 gets its own test: the gRPC code, the stable ErrorInfo
//! reason, and the audit record of the refused call (matched by its x-request-id).
//! Where a boundary exists, the value just inside it is shown to work, so a server that
//! refuses everything would not pass. Lifecycle refusals are in `lifecycle.rs`, TLS and
//! principal refusals in `auth.rs`.

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, message, sign, verify},
    expect_ok,
    keys::describe_key,
    status::{describe, key_method},
    v1::{
        CreateAliasRequest, CreateKeyRequest, DescribeKeyRequest, GenerateRandomRequest, KeySpec,
        KeyUsage, ListKeysRequest, MessageType, SigningAlgorithm,
    },
};
use sha2::{Digest, Sha256};
use tonic::Code;

const UNKNOWN_KEY: &str = "5d0a8f5e-3c1b-4b7e-9a51-0c2f1e6d7a99";

#[tokio::test]
async fn unknown_key_is_not_found() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let r = sign(
        &mut keys,
        UNKNOWN_KEY,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"x",
    )
    .await;
    d.assert_refused(r, &key_method("Sign"), Code::NotFound, "KEY_NOT_FOUND");
    let r = keys
        .describe_key(DescribeKeyRequest {
            key_id: UNKNOWN_KEY.into(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("DescribeKey"),
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
}

#[tokio::test]
async fn unknown_alias_is_not_found() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let alias = "alias/does-not-exist";
    let r = sign(
        &mut keys,
        alias,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"x",
    )
    .await;
    let rec = d.assert_refused(r, &key_method("Sign"), Code::NotFound, "ALIAS_NOT_FOUND");
    assert_eq!(
        rec.str("alias"),
        alias,
        "the audit record names the alias asked for: {}",
        rec.raw
    );
}

#[tokio::test]
async fn alias_already_taken() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let first = create_key(&mut keys, KeySpec::EcP256, "payments").await;
    let second = create_key(&mut keys, KeySpec::EcP256, "").await;

    let r = keys
        .create_alias(CreateAliasRequest {
            alias_name: "alias/payments".into(),
            target_key_id: second.clone(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("CreateAlias"),
        Code::AlreadyExists,
        "ALIAS_EXISTS",
    );
    assert_eq!(
        describe_key(&d, "alias/payments").await.key_id,
        first,
        "a refused CreateAlias must not move the alias"
    );

    // CreateKey with a taken alias is refused too, and leaves no key behind.
    let r = keys
        .create_key(CreateKeyRequest {
            spec: KeySpec::EcP256 as i32,
            usage: KeyUsage::SignVerify as i32,
            alias: "payments".into(),
            ..Default::default()
        })
        .await;
    d.assert_refused(
        r,
        &key_method("CreateKey"),
        Code::AlreadyExists,
        "ALIAS_EXISTS",
    );
    let (list, _) = expect_ok(keys.list_keys(ListKeysRequest::default()).await, "ListKeys");
    let mut ids: Vec<String> = list.keys.into_iter().map(|k| k.key_id).collect();
    ids.sort();
    let mut want = vec![first, second];
    want.sort();
    assert_eq!(ids, want, "a refused CreateKey must not leave a key behind");
}

#[tokio::test]
async fn malformed_key_id_is_invalid() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    for bad in [
        "not-a-key-id",
        "5d0a8f5e-3c1b-4b7e-9a51-0c2f1e6d7a9",
        "5d0a8f5e 3c1b",
    ] {
        let r = sign(
            &mut keys,
            bad,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"x",
        )
        .await;
        d.assert_refused(
            r,
            &key_method("Sign"),
            Code::InvalidArgument,
            "INVALID_KEY_ID",
        );
    }
    let r = keys
        .describe_key(DescribeKeyRequest {
            key_id: "not-a-key-id".into(),
        })
        .await;
    d.assert_refused(
        r,
        &key_method("DescribeKey"),
        Code::InvalidArgument,
        "INVALID_KEY_ID",
    );
}

#[tokio::test]
async fn raw_message_over_4096_bytes_is_too_large() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    let alg = SigningAlgorithm::EcdsaSha256;

    let at_limit = message(4096, 1);
    let (resp, _) = expect_ok(
        sign(&mut keys, &key, alg, MessageType::Raw, &at_limit).await,
        "Sign 4096 bytes",
    );
    let (v, _) = expect_ok(
        verify(
            &mut keys,
            &key,
            alg,
            MessageType::Raw,
            &at_limit,
            &resp.signature,
        )
        .await,
        "Verify 4096 bytes",
    );
    assert!(
        v.valid,
        "a 4096-byte RAW message is within the limit and must sign and verify"
    );

    let over = message(4097, 2);
    let r = sign(&mut keys, &key, alg, MessageType::Raw, &over).await;
    let rec = d.assert_refused(
        r,
        &key_method("Sign"),
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
    );
    assert!(
        !rec.raw.contains(&hex::encode(&over[..64])),
        "the audit record must not hold the message: {}",
        rec.raw
    );
    let r = verify(
        &mut keys,
        &key,
        alg,
        MessageType::Raw,
        &over,
        &resp.signature,
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Verify"),
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
    );
}

#[tokio::test]
async fn digest_of_wrong_length_is_refused() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    let alg = SigningAlgorithm::EcdsaSha256;
    let good = Sha256::digest(b"message").to_vec();
    expect_ok(
        sign(&mut keys, &key, alg, MessageType::Digest, &good).await,
        "Sign 32-byte digest",
    );
    for len in [0usize, 31, 33, 48, 64] {
        let r = sign(&mut keys, &key, alg, MessageType::Digest, &vec![7u8; len]).await;
        d.assert_refused(
            r,
            &key_method("Sign"),
            Code::InvalidArgument,
            "DIGEST_LENGTH_MISMATCH",
        );
    }
}

#[tokio::test]
async fn algorithm_not_valid_for_the_key_spec() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let rsa = create_key(&mut keys, KeySpec::Rsa2048, "").await;
    let p256 = create_key(&mut keys, KeySpec::EcP256, "").await;
    let r = sign(
        &mut keys,
        &rsa,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"m",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
    let r = sign(
        &mut keys,
        &p256,
        SigningAlgorithm::EcdsaSha384,
        MessageType::Raw,
        b"m",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
    let r = sign(
        &mut keys,
        &p256,
        SigningAlgorithm::RsaPssSha256,
        MessageType::Raw,
        b"m",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Sign"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
    let r = verify(
        &mut keys,
        &p256,
        SigningAlgorithm::EcdsaSha384,
        MessageType::Raw,
        b"m",
        b"s",
    )
    .await;
    d.assert_refused(
        r,
        &key_method("Verify"),
        Code::InvalidArgument,
        "ALGORITHM_NOT_ALLOWED",
    );
}

#[tokio::test]
async fn empty_and_garbage_signatures_verify_false() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let cases = [
        (KeySpec::EcP256, SigningAlgorithm::EcdsaSha256),
        (KeySpec::Rsa2048, SigningAlgorithm::RsaPkcs1Sha256),
        (KeySpec::Rsa2048, SigningAlgorithm::RsaPssSha256),
        (KeySpec::Ed25519, SigningAlgorithm::Ed25519Sha512),
    ];
    let mut rsa_key = None;
    for (spec, alg) in cases {
        if !d.offers_spec(spec).await {
            continue;
        }
        let key = match (spec, &rsa_key) {
            (KeySpec::Rsa2048, Some(k)) => String::clone(k),
            _ => create_key(&mut keys, spec, "").await,
        };
        if spec == KeySpec::Rsa2048 {
            rsa_key = Some(key.clone());
        }
        let msg = b"the message".to_vec();
        let (good, _) = expect_ok(
            sign(&mut keys, &key, alg, MessageType::Raw, &msg).await,
            "Sign",
        );
        let mut truncated = good.signature.clone();
        truncated.pop();
        let garbage: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0x41; 7],
            vec![0xff; good.signature.len()],
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00],
            truncated,
        ];
        for sig in garbage {
            let r = verify(&mut keys, &key, alg, MessageType::Raw, &msg, &sig).await;
            let what = format!("{spec:?}/{alg:?} Verify of {} garbage bytes", sig.len());
            let resp = r.unwrap_or_else(|s| {
                panic!("{what}: expected OK valid=false, got {}", describe(&s))
            });
            let rid = hsmd_e2e::request_id(resp.metadata(), &what);
            assert!(!resp.get_ref().valid, "{what}: answered valid=true");
            d.assert_audited(&rid, &key_method("Verify"), "ok", "OK", "");
        }
    }
}

#[tokio::test]
async fn random_length_out_of_range_is_invalid() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let (a, _) = expect_ok(
        keys.generate_random(GenerateRandomRequest { length: 1024 })
            .await,
        "GenerateRandom 1024",
    );
    let (b, _) = expect_ok(
        keys.generate_random(GenerateRandomRequest { length: 1024 })
            .await,
        "GenerateRandom 1024",
    );
    assert_eq!(a.random.len(), 1024);
    assert_ne!(a.random, b.random, "two random draws are equal");
    for length in [0u32, 1025] {
        let r = keys.generate_random(GenerateRandomRequest { length }).await;
        d.assert_refused(
            r,
            &key_method("GenerateRandom"),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
}
