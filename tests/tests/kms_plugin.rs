//! The Kubernetes KMS v2 plugin, end to end: `hsmd dev --kms-socket PATH` on a real
//! SoftHSM2 token, driven over the Unix socket by a client generated from the vendored
//! upstream `api.proto` (as the API server is). Encrypt/Decrypt round trips, key_id
//! stable until RotateKey and new after it, old ciphertexts still open, tampered,
//! mislabelled and foreign ciphertexts refused without plaintext, oversized DEKs
//! refused, every call audited under `kubernetes:<socket>` with the API server's uid,
//! the socket 0600, and a stale socket from a crash replaced at start-up.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use hsmd_e2e::{
    Daemon, Need, TokenKind, args,
    crypt::{create_key, encrypt},
    expect_ok,
    keys::describe_key,
    kms::kms_client,
    status::reason_of,
    v1::{EncryptionAlgorithm, KeySpec, KeyUsage, RotateKeyRequest},
};
use hsmd_proto::kms_v2::{DecryptRequest, EncryptRequest, StatusRequest, StatusResponse};
use tonic::Code;

const ALIAS: &str = "alias/k8s-secrets";

async fn status(sock: &Path) -> StatusResponse {
    kms_client(sock)
        .await
        .status(StatusRequest {})
        .await
        .expect("Status")
        .into_inner()
}

async fn kms_encrypt(sock: &Path, plaintext: &[u8], uid: &str) -> (Vec<u8>, String) {
    let r = kms_client(sock)
        .await
        .encrypt(EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid.to_owned(),
        })
        .await
        .expect("Encrypt")
        .into_inner();
    assert_eq!(
        r.annotations.get("version.hsmd.dev").map(Vec::as_slice),
        Some(&b"1"[..]),
        "annotations {:?}",
        r.annotations
    );
    for k in r.annotations.keys() {
        assert!(k.contains('.'), "annotation key {k} is no DNS name");
    }
    (r.ciphertext.clone(), r.key_id.clone())
}

async fn kms_decrypt(
    sock: &Path,
    ciphertext: &[u8],
    key_id: &str,
    uid: &str,
) -> Result<Vec<u8>, tonic::Status> {
    kms_client(sock)
        .await
        .decrypt(DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: uid.to_owned(),
            key_id: key_id.to_owned(),
            annotations: Default::default(),
        })
        .await
        .map(|r| r.into_inner().plaintext.clone())
}

/// Asserts a refusal with `code`/`reason` and that its audit record (by uid) says so.
fn assert_refused(
    d: &Daemon,
    r: Result<Vec<u8>, tonic::Status>,
    uid: &str,
    code: Code,
    reason: &str,
) {
    match r {
        Ok(p) => panic!(
            "{uid}: expected {reason}, got {} bytes of plaintext",
            p.len()
        ),
        Err(s) => {
            assert_eq!(s.code(), code, "{uid}: {s:?}");
            assert_eq!(reason_of(&s).as_deref(), Some(reason), "{uid}: {s:?}");
        }
    }
    let rec = d.audit_record(uid);
    assert_eq!(rec.str("reason"), reason, "{uid}");
    assert_eq!(rec.str("method"), "/v2.KeyManagementService/Decrypt");
}

#[tokio::test]
async fn kubernetes_kms_v2_plugin_encrypts_rotates_and_refuses() {
    let dir = tempfile::Builder::new()
        .prefix("kms")
        .tempdir()
        .expect("tempdir");
    let sock = dir.path().join("kms.sock");
    if TokenKind::under_test() != TokenKind::SoftHsm {
        // The plugin encrypts with AES-GCM in the token: where the token lacks it, hsmd
        // must say so at start-up, naming the mechanism, instead of serving a plugin
        // that fails every call.
        let mut d = Daemon::start().await;
        if !d.offers(Need::Aes256).await {
            d.stop().await;
            let data_dir = d.data_dir().to_path_buf();
            let mut argv = args!["dev", "--data-dir", data_dir, "--listen", "127.0.0.1:0"];
            argv.extend(args!["--kms-socket", sock]);
            argv.extend(TokenKind::under_test().dev_args().iter().map(Into::into));
            let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
            let out = d.run_hsmd_to_exit(&argv).await;
            assert_ne!(out.code, Some(0), "{}", out.describe());
            assert!(
                out.stderr.contains("alias/k8s-secrets") && out.stderr.contains("CKM_AES_GCM"),
                "the refusal names neither the plugin key nor the mechanism\n{}",
                out.describe()
            );
            return;
        }
    }
    let mut d = Daemon::start_with(["--kms-socket".as_ref(), sock.as_os_str()]).await;
    let meta = std::fs::metadata(&sock).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let principal = format!("kubernetes:{}", sock.display());

    // The dev daemon made the key and its alias.
    let key = describe_key(&d, ALIAS).await;
    assert_eq!(key.spec, KeySpec::Aes256 as i32);

    let st = status(&sock).await;
    assert_eq!((st.version.as_str(), st.healthz.as_str()), ("v2", "ok"));
    let k1 = st.key_id.clone();
    assert_eq!(k1, format!("{}:v1", key.key_id));

    // 32 bytes from the kernel, as the API server's DEK would be.
    let mut dek = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        &mut dek,
    )
    .expect("random bytes");
    let (c1, id1) = kms_encrypt(&sock, &dek, "uid-enc-1").await;
    assert_eq!(id1, k1, "Encrypt's key_id is Status's");
    let (_, again) = kms_encrypt(&sock, &dek, "uid-enc-2").await;
    assert_eq!(again, k1, "key_id stable while the version is");
    assert_eq!(
        kms_decrypt(&sock, &c1, &id1, "uid-dec-1").await.unwrap(),
        dek
    );
    let rec = d.audit_record("uid-enc-1");
    assert_eq!(rec.str("principal"), principal);
    assert_eq!(rec.str("method"), "/v2.KeyManagementService/Encrypt");
    assert_eq!(rec.str("key_id"), key.key_id);
    assert_eq!(rec.str("outcome"), "ok");
    let dek_hex = hex::encode(dek);
    assert!(
        !d.audit_text().contains(&dek_hex),
        "the DEK is in the audit log"
    );
    assert_eq!(d.audit_record("uid-dec-1").str("outcome"), "ok");

    // Rotate: Status's key_id changes at once, new ciphertexts carry it, old ones open.
    expect_ok(
        d.keys()
            .rotate_key(RotateKeyRequest {
                key_id: ALIAS.into(),
            })
            .await,
        "RotateKey",
    );
    let k2 = status(&sock).await.key_id;
    assert_eq!(k2, format!("{}:v2", key.key_id));
    let (c2, id2) = kms_encrypt(&sock, &dek, "uid-enc-3").await;
    assert_eq!(id2, k2);
    assert_eq!(
        kms_decrypt(&sock, &c1, &k1, "uid-dec-2").await.unwrap(),
        dek
    );
    assert_eq!(
        kms_decrypt(&sock, &c2, &k2, "uid-dec-3").await.unwrap(),
        dek
    );

    // Refusals, never plaintext: a flipped byte, a key_id of another version or one
    // hsmd never had, a ciphertext of another key, an oversized DEK.
    let mut flipped = c2.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let r = kms_decrypt(&sock, &flipped, &k2, "uid-bad-1").await;
    assert_refused(
        &d,
        r,
        "uid-bad-1",
        Code::InvalidArgument,
        "DECRYPTION_FAILED",
    );
    let r = kms_decrypt(&sock, &c1, &k2, "uid-bad-2").await;
    assert_refused(
        &d,
        r,
        "uid-bad-2",
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
    );
    let never = format!("{}:v9", key.key_id);
    let r = kms_decrypt(&sock, &c1, &never, "uid-bad-3").await;
    assert_refused(
        &d,
        r,
        "uid-bad-3",
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
    );
    let mut v9 = c2.clone();
    v9[21..25].copy_from_slice(&9u32.to_be_bytes());
    let r = kms_decrypt(&sock, &v9, &never, "uid-bad-4").await;
    assert_refused(
        &d,
        r,
        "uid-bad-4",
        Code::InvalidArgument,
        "INVALID_CIPHERTEXT",
    );
    let other = create_key(&mut d.keys(), KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await;
    let sym = EncryptionAlgorithm::SymmetricDefault;
    let foreign = expect_ok(
        encrypt(&mut d.keys(), &other, sym, &dek, b"").await,
        "Encrypt under another key",
    )
    .0
    .ciphertext;
    let r = kms_decrypt(&sock, &foreign, &format!("{other}:v1"), "uid-bad-5").await;
    assert_refused(
        &d,
        r,
        "uid-bad-5",
        Code::InvalidArgument,
        "DECRYPTION_FAILED",
    );
    // KeyService callers cannot use the plugin's AAD: neither to open a Secret's DEK
    // (even with Decrypt on the key) nor to forge one the plugin would accept.
    let plugin_aad = b"hsmd kubernetes kms v2";
    d.assert_refused(
        hsmd_e2e::crypt::decrypt(&mut d.keys(), &key.key_id, sym, &c1, plugin_aad).await,
        &hsmd_e2e::status::key_method("Decrypt"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    d.assert_refused(
        encrypt(&mut d.keys(), &key.key_id, sym, &dek, plugin_aad).await,
        &hsmd_e2e::status::key_method("Encrypt"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let big = kms_client(&sock)
        .await
        .encrypt(EncryptRequest {
            plaintext: vec![7; 2048],
            uid: "uid-big".into(),
        })
        .await;
    let s = big.expect_err("2 KiB DEK accepted");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&s).as_deref(), Some("PLAINTEXT_TOO_LARGE"));
    assert_eq!(
        d.audit_record("uid-big").str("reason"),
        "PLAINTEXT_TOO_LARGE"
    );

    // A crash leaves the socket file behind: the next start replaces it, and the key's
    // versions are still there.
    d.stop().await;
    let _ = std::fs::remove_file(&sock);
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists(), "stale socket file in place");
    d.restart().await;
    let st = status(&sock).await;
    assert_eq!(
        (st.healthz.as_str(), st.key_id.as_str()),
        ("ok", k2.as_str())
    );
    assert_eq!(
        kms_decrypt(&sock, &c1, &k1, "uid-after-1").await.unwrap(),
        dek
    );
    assert_eq!(
        kms_decrypt(&sock, &c2, &k2, "uid-after-2").await.unwrap(),
        dek
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode after restart");
    let checked = d.hsmctl_ok(hsmd_e2e::args!["audit", "verify"]);
    assert!(checked.starts_with("ok"), "{checked}");
}
