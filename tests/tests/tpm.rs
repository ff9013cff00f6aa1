//! hsmd on a second PKCS#11 implementation: tpm2-pkcs11 on a software TPM (swtpm, with
//! a private D-Bus and tpm2-abrmd), started by `hsmd dev --token tpm` once for this test
//! binary. What the token can do is proven with tools that share no code with hsmd
//! (openssl, pkcs11-tool); what it cannot do is asserted as a refusal that names the
//! mechanism, never skipped.
//!
//! One test, one token: provisioning a TPM token costs seconds, and each step below
//! names itself in its panic message.

use std::path::Path;

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, openssl_verify, sign},
    args,
    crypt::openssl_oaep_encrypt,
    expect_ok, reason_of,
    tools::{openssl, write_file},
    tpm::TPM_ARGS,
    v1::{
        CreateKeyRequest, DecryptRequest, EncryptionAlgorithm, GetPublicKeyRequest,
        GetTokenInfoRequest, GetTokenInfoResponse, KeyOrigin, KeySpec, KeyUsage, MessageType,
        SigningAlgorithm,
    },
};
use tonic::Code;

#[tokio::test]
async fn tpm_token_signs_decrypts_audits_and_refuses_what_it_lacks() {
    let mut d = Daemon::start_with(TPM_ARGS).await;
    let info = token_info_names_the_tpm_token(&d).await;
    refusals_name_the_missing_mechanism(&d, &info).await;
    let sign_keys = signatures_verify_with_openssl(&d).await;
    csr_and_certificate_verify_with_openssl(&d, &sign_keys[0]);
    let random = d.hsmctl_ok(["-o", "json", "random", "32"]);
    assert!(random.len() > 32, "random bytes from the TPM: {random}");
    oaep_decrypts_openssl_ciphertexts(&d).await;
    private_keys_are_sensitive_and_not_extractable(&d, &sign_keys);
    let _restarted = tpm_restart_gives_unavailable_then_recovers(&d, &sign_keys[0]).await;
    audit_checkpoints_verify_offline(&mut d).await;
}

/// swtpm and tpm2-abrmd die under a running hsmd: calls fail with UNAVAILABLE (never a
/// wrong answer or INTERNAL); once they run again, hsmd re-initializes the module and
/// the same key signs again, without an hsmd restart.
async fn tpm_restart_gives_unavailable_then_recovers(
    d: &Daemon,
    key: &str,
) -> hsmd_e2e::tpm::TpmProcesses {
    let mut keys = d.keys();
    let msg = b"after the TPM came back";
    d.kill_tpm_processes();
    for _ in 0..2 {
        let r = sign(
            &mut keys,
            key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            msg,
        )
        .await;
        let status = r.expect_err("Sign while the TPM is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            reason_of(&status).as_deref(),
            Some("TOKEN_UNAVAILABLE"),
            "{status:?}"
        );
    }
    let procs = d.start_tpm_processes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sig = loop {
        match sign(
            &mut keys,
            key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            msg,
        )
        .await
        {
            Ok(r) => break r.into_inner().signature,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "while recovering: {s:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "hsmd did not recover: {s:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        d.stderr_text()
            .contains("PKCS#11 module re-initialized; the token is back"),
        "no re-initialization in the log:\n{}",
        d.stderr_text()
    );
    let pem = public_pem(d, key, "recovered").await;
    let scratch = d.scratch();
    let msg_path = write_file(&scratch, "recovered.txt", msg);
    let sig_path = write_file(&scratch, "recovered.sig", &sig);
    assert!(
        openssl_verify(SigningAlgorithm::EcdsaSha256, &pem, &msg_path, &sig_path),
        "openssl rejects the signature made after recovery"
    );
    procs
}

async fn token_info_names_the_tpm_token(d: &Daemon) -> GetTokenInfoResponse {
    let (info, _) = expect_ok(
        d.token().get_token_info(GetTokenInfoRequest {}).await,
        "GetTokenInfo",
    );
    assert_eq!(info.label, "hsmd-dev");
    assert!(
        info.module_path.ends_with("libtpm2_pkcs11.so"),
        "module {:?}",
        info.module_path
    );
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::EcP256,
        KeySpec::EcP384,
    ] {
        assert!(
            info.key_specs.contains(&(spec as i32)),
            "{spec:?} not offered on the TPM token: {:?}",
            info.key_specs
        );
    }
    for spec in [KeySpec::Rsa4096, KeySpec::Ed25519, KeySpec::Aes256] {
        assert!(
            !info.key_specs.contains(&(spec as i32)),
            "{spec:?} offered on the TPM token"
        );
    }
    assert!(
        !info.usage_enforced_by_token,
        "tpm2-pkcs11 sets CKA_DECRYPT on signing keys; token info must say so"
    );
    for row in ["session key objects (CKA_TOKEN false)", "C_CopyObject"] {
        assert!(
            info.capabilities
                .iter()
                .any(|c| c.mechanism == row && !c.supported),
            "tpm2-pkcs11 has no {row}; token info says otherwise: {:?}",
            info.capabilities
        );
    }
    let text = d.hsmctl_ok(["token", "info"]);
    for (feature, mechanism) in [
        ("RSA_4096", "CKM_RSA_PKCS_KEY_PAIR_GEN"),
        ("ED25519", "CKM_EC_EDWARDS_KEY_PAIR_GEN"),
        ("AES_256", "CKM_AES_GCM"),
        ("SYMMETRIC_DEFAULT", "CKM_AES_GCM"),
        (
            "import with RSA_AES_KEY_WRAP_SHA_256",
            "CKM_AES_KEY_WRAP_PAD",
        ),
        ("import with RSAES_OAEP_SHA_256", "CKM_RSA_PKCS_OAEP"),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(feature)
                && l.contains(" refused ")
                && l.contains(mechanism)),
            "hsmctl token info does not list {feature} as refused for {mechanism}:\n{text}"
        );
    }
    assert!(text.contains("key usage     by hsmd only"), "{text}");
    info
}

async fn refusals_name_the_missing_mechanism(d: &Daemon, info: &GetTokenInfoResponse) {
    use KeyOrigin::{External, Hsm};
    let cases = [
        (
            KeySpec::Rsa4096,
            KeyUsage::SignVerify,
            Hsm,
            "CKM_RSA_PKCS_KEY_PAIR_GEN",
        ),
        (
            KeySpec::Ed25519,
            KeyUsage::SignVerify,
            Hsm,
            "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        ),
        (
            KeySpec::Aes256,
            KeyUsage::EncryptDecrypt,
            Hsm,
            "CKM_AES_GCM",
        ),
        // No key would ever leave PENDING_IMPORT: RSA import needs AES key wrap.
        (
            KeySpec::Rsa2048,
            KeyUsage::SignVerify,
            External,
            "CKM_AES_KEY_WRAP_PAD",
        ),
    ];
    for (spec, usage, origin, mechanism) in cases {
        let r = d
            .keys()
            .create_key(CreateKeyRequest {
                spec: spec as i32,
                usage: usage as i32,
                origin: origin as i32,
                ..Default::default()
            })
            .await;
        let status = r.expect_err(&format!("CreateKey {spec:?} on the TPM token"));
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{spec:?}: {status:?}"
        );
        assert_eq!(
            reason_of(&status).as_deref(),
            Some("MECHANISM_NOT_SUPPORTED"),
            "{spec:?}: {status:?}"
        );
        assert!(
            status.message().contains(mechanism),
            "{spec:?}: the refusal does not name {mechanism}: {}",
            status.message()
        );
        assert!(
            info.refusals
                .iter()
                .any(|r| r.mechanism == mechanism && status.message().contains(&r.feature)),
            "GetTokenInfo lists no refusal matching {:?}",
            status.message()
        );
    }
}

/// RSA-2048 (PKCS#1 v1.5 and PSS) and EC P-256/P-384 keys made in the TPM, signatures
/// over RAW messages checked by `openssl dgst -verify`. Returns the key ids.
async fn signatures_verify_with_openssl(d: &Daemon) -> Vec<String> {
    let scratch = d.scratch();
    let msg = b"release 1.0 signed in a TPM";
    let msg_path = write_file(&scratch, "tpm-msg.txt", msg);
    let mut keys = d.keys();
    let mut ids = Vec::new();
    for (spec, algs) in [
        (KeySpec::EcP256, &[SigningAlgorithm::EcdsaSha256][..]),
        (
            KeySpec::Rsa2048,
            &[
                SigningAlgorithm::RsaPkcs1Sha256,
                SigningAlgorithm::RsaPssSha256,
            ][..],
        ),
        (KeySpec::EcP384, &[SigningAlgorithm::EcdsaSha384][..]),
    ] {
        let id = create_key(&mut keys, spec, "").await;
        let pem = public_pem(d, &id, &format!("{spec:?}")).await;
        for &alg in algs {
            let r = sign(&mut keys, &id, alg, MessageType::Raw, msg).await;
            let (resp, _) = expect_ok(r, &format!("Sign {alg:?} with {spec:?}"));
            let sig = write_file(&scratch, &format!("{alg:?}.sig"), &resp.signature);
            assert!(
                openssl_verify(alg, &pem, &msg_path, &sig),
                "openssl rejects the TPM's {alg:?} signature ({spec:?})"
            );
        }
        ids.push(id);
    }
    ids
}

async fn public_pem(d: &Daemon, id: &str, name: &str) -> std::path::PathBuf {
    let (pk, _) = expect_ok(
        d.keys()
            .get_public_key(GetPublicKeyRequest {
                key_id: id.to_owned(),
            })
            .await,
        "GetPublicKey",
    );
    write_file(
        &d.scratch(),
        &format!("{name}.pub.pem"),
        pk.public_key_pem.as_bytes(),
    )
}

/// A CSR and a self-signed certificate signed in the TPM; the certificate is also
/// stored in the token as a certificate object (C_CreateObject).
fn csr_and_certificate_verify_with_openssl(d: &Daemon, key: &str) {
    let out = d.scratch().join("tpm.csr");
    d.hsmctl_ok(args![
        "csr",
        key,
        "--subject",
        "CN=tpm.example.com,O=hsmd",
        "--san",
        "dns:tpm.example.com",
        "--out",
        &out
    ]);
    let verify = openssl(args!["req", "-verify", "-noout", "-in", &out]);
    assert!(
        format!("{}{}", verify.stdout, verify.stderr).contains("verify OK"),
        "openssl req -verify of a CSR signed in the TPM\n{}",
        verify.describe()
    );
    let cert = d.scratch().join("tpm-self.pem");
    d.hsmctl_ok(args![
        "cert",
        "self-signed",
        key,
        "--subject",
        "CN=tpm bootstrap",
        "--days",
        "1",
        "--out",
        &cert,
        "--import"
    ]);
    let verify = openssl(args!["verify", "-CAfile", &cert, &cert]);
    assert!(
        verify.stdout.contains(": OK"),
        "openssl verify of a certificate signed in the TPM\n{}",
        verify.describe()
    );
}

async fn oaep_decrypts_openssl_ciphertexts(d: &Daemon) {
    let mut keys = d.keys();
    let req = CreateKeyRequest {
        spec: KeySpec::Rsa2048 as i32,
        usage: KeyUsage::EncryptDecrypt as i32,
        ..Default::default()
    };
    let id = hsmd_e2e::keys::create(&mut keys, req, "RSA_2048 encrypt-decrypt").await;
    let pem = public_pem(d, &id, "oaep").await;
    for (alg, md) in [
        (EncryptionAlgorithm::RsaesOaepSha256, "sha256"),
        (EncryptionAlgorithm::RsaesOaepSha1, "sha1"),
    ] {
        let plaintext = format!("secret for the TPM ({md})").into_bytes();
        let ct = openssl_oaep_encrypt(&d.scratch(), Path::new(&pem), md, &plaintext);
        let r = keys
            .decrypt(DecryptRequest {
                key_id: id.clone(),
                ciphertext: ct,
                encryption_algorithm: alg as i32,
                ..Default::default()
            })
            .await;
        let (resp, _) = expect_ok(r, &format!("Decrypt {alg:?} on the TPM token"));
        assert_eq!(resp.plaintext, plaintext, "{alg:?} plaintext");
    }
}

fn private_keys_are_sensitive_and_not_extractable(d: &Daemon, key_ids: &[String]) {
    let objects = d.tpm_objects();
    for id in key_ids {
        let private: Vec<_> = objects
            .iter()
            .filter(|o| o.is_private_key() && o.field("label") == id)
            .collect();
        assert_eq!(
            private.len(),
            1,
            "pkcs11-tool sees {} private objects for {id}: {objects:#?}",
            private.len()
        );
        let access = private[0].words("Access");
        assert!(
            access.iter().any(|w| w == "sensitive"),
            "{id} not sensitive: {access:?}"
        );
        assert!(
            access.iter().any(|w| w == "never extractable"),
            "{id} extractable: {access:?}"
        );
        assert!(
            !access.iter().any(|w| w == "extractable"),
            "{id} extractable: {access:?}"
        );
    }
}

/// The checkpoint key is an EC P-256 key in the TPM; a graceful stop seals the log with
/// a checkpoint, which `hsmctl audit verify --public-key` checks with no daemon.
async fn audit_checkpoints_verify_offline(d: &mut Daemon) {
    let pem = d.scratch().join("audit.pem");
    d.hsmctl_ok(args!["audit", "public-key", "--out", &pem]);
    d.stop().await;
    let dir = d.data_dir().join("audit");
    let out = d.hsmctl(args![
        "audit",
        "verify",
        "--public-key",
        &pem,
        "--sealed",
        &dir
    ]);
    assert!(
        out.success() && out.stdout.starts_with("ok: "),
        "offline verification of the TPM-signed audit log\n{}",
        out.describe()
    );
}
