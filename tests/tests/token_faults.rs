//! Token faults while hsmd runs, injected by `libfaultp11.so` (tests/faultp11), a
//! PKCS#11 module that forwards to SoftHSM2 and fails calls while a trigger file exists:
//! - every open session answering CKR_SESSION_HANDLE_INVALID (a token reset): the calls
//!   that meet a dead session fail UNAVAILABLE, hsmd replaces those sessions, and calls
//!   succeed again without a restart;
//! - the token "removed" (CKR_DEVICE_REMOVED from every call, C_OpenSession included):
//!   calls fail UNAVAILABLE while it lasts, never INTERNAL and never a wrong answer, and
//!   once it is back hsmd re-initializes the module and the same key signs again.
//!
//! Signatures made after recovery are checked by openssl.

use std::{fs, time::Duration};

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, openssl_verify, public_key_pem_file, sign},
    configured::with_admin_policy,
    status::describe,
    tools::{workspace_bin, write_file},
    v1::{GetTokenInfoRequest, KeySpec, MessageType, SigningAlgorithm},
};
use tonic::Code;

const ALG: SigningAlgorithm = SigningAlgorithm::EcdsaSha256;

/// Signs once: Ok(signature), or the status, which must be UNAVAILABLE.
async fn try_sign(d: &Daemon, key: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
    match sign(&mut d.keys(), key, ALG, MessageType::Raw, msg).await {
        Ok(r) => Ok(r.into_inner().signature),
        Err(s) => {
            assert_eq!(
                s.code(),
                Code::Unavailable,
                "a token fault must answer UNAVAILABLE: {}",
                describe(&s)
            );
            Err(describe(&s))
        }
    }
}

#[tokio::test]
async fn lost_sessions_and_a_removed_token_give_unavailable_then_recover() {
    let module = workspace_bin("libfaultp11.so");
    let (d, _config) = Daemon::start_configured(&with_admin_policy(&format!(
        "[hsm]\nmodule = \"{}\"\n",
        module.display()
    )))
    .await;
    let info = d
        .token()
        .get_token_info(GetTokenInfoRequest {})
        .await
        .expect("GetTokenInfo")
        .into_inner();
    assert!(
        info.module_path.ends_with("libfaultp11.so"),
        "hsmd does not run through the fault module: {}",
        info.module_path
    );
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    try_sign(&d, &key, b"before").await.expect("sign before");
    let trigger = d.data_dir().join("faultp11.trigger");

    // Every open session dies at once.
    fs::write(&trigger, "SESSION_HANDLE_INVALID\n").expect("trigger");
    let mut failed = 0;
    let mut tail_ok = 0;
    for i in 0..(2 * info.session_pool_size + 10) {
        match try_sign(&d, &key, format!("lost {i}").as_bytes()).await {
            Ok(_) => tail_ok += 1,
            Err(_) => {
                failed += 1;
                tail_ok = 0;
            }
        }
    }
    assert!(
        failed >= 1 && failed <= info.session_pool_size as usize * 2,
        "{failed} calls failed for {} pooled sessions",
        info.session_pool_size
    );
    assert!(
        tail_ok >= 10,
        "calls did not recover after the sessions died"
    );
    fs::remove_file(&trigger).expect("clear trigger");

    // The token goes away, then comes back.
    fs::write(&trigger, "DEVICE_REMOVED\n").expect("trigger");
    for i in 0..5 {
        let r = try_sign(&d, &key, format!("removed {i}").as_bytes()).await;
        assert!(r.is_err(), "a call succeeded while the token was removed");
    }
    fs::remove_file(&trigger).expect("clear trigger");
    let mut recovered = None;
    for i in 0..50 {
        if let Ok(sig) = try_sign(&d, &key, b"back again").await {
            recovered = Some((i, sig));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (tries, sig) = recovered.expect("the key never signed again after the token came back");
    eprintln!("---- signed again after {tries} failed tries");

    let dir = d.scratch();
    let pem = public_key_pem_file(&mut d.keys(), &key, &dir, "key.pem").await;
    let msg = write_file(&dir, "msg", b"back again");
    let sig = write_file(&dir, "sig", &sig);
    assert!(
        openssl_verify(ALG, &pem, &msg, &sig),
        "openssl rejects the signature made after recovery"
    );
    let out = d.hsmctl(["audit", "verify"]);
    assert!(out.success(), "audit verify\n{}", out.describe());
}
