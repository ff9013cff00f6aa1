//! The README's worked example with `hsmctl`: create a key, sign a file, export the
//! public key as PEM, verify with openssl; and hsmctl's exit codes (0 valid, 1 invalid,
//! 2 error with `error: ...` on stderr).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use hsmd_e2e::{
    Daemon, Need,
    algorithms::openssl_verify,
    args,
    tools::{run, write_file},
    v1::SigningAlgorithm,
};

const UNKNOWN_KEY: &str = "5d0a8f5e-3c1b-4b7e-9a51-0c2f1e6d7a99";

/// `hsmctl key create` prints only the key id.
fn create(d: &Daemon, spec: &str, alias: Option<&str>) -> String {
    let mut a = args!["key", "create", "--spec", spec, "--usage", "sign-verify"];
    if let Some(alias) = alias {
        a.extend(args!["--alias", alias]);
    }
    let id = d.hsmctl_ok(a);
    assert!(
        id.len() == 36 && uuid::Uuid::parse_str(&id).is_ok(),
        "key create must print only the key id, printed {id:?}"
    );
    id
}

/// `hsmctl key public K --pem --out F`; returns F.
fn export_pem(d: &Daemon, key: &str) -> PathBuf {
    let pem = d
        .scratch()
        .join(format!("{}.pub.pem", key.replace('/', "_")));
    d.hsmctl_ok(args!["key", "public", key, "--pem", "--out", pem]);
    let text = std::fs::read_to_string(&pem).expect("read exported PEM");
    assert!(
        text.starts_with("-----BEGIN PUBLIC KEY-----"),
        "not a PEM public key:\n{text}"
    );
    pem
}

#[tokio::test]
async fn worked_example_sign_a_file_and_verify_with_openssl() {
    let d = Daemon::start().await;
    let dir = d.scratch();
    let key = create(&d, "EC_P256", Some("release-signing"));
    let msg = write_file(&dir, "release.tar", b"the release artefact\n");
    let tampered = write_file(&dir, "tampered.tar", b"the release artefacT\n");
    let sig = dir.join("release.sig");

    let signed = d.hsmctl(args![
        "sign",
        key,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg,
        "--out",
        sig
    ]);
    signed.expect_code(0);
    let sig_bytes = std::fs::read(&sig).expect("signature file");
    assert_eq!(
        sig_bytes.first(),
        Some(&0x30),
        "--out holds the raw DER signature"
    );
    let pem = export_pem(&d, &key);
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg));

    for (file, code, word) in [(&msg, 0, "valid"), (&tampered, 1, "invalid")] {
        let out = d.hsmctl(args![
            "verify",
            "alias/release-signing",
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            file,
            "--signature",
            sig
        ]);
        out.expect_code(code);
        assert_eq!(out.stdout.trim(), word, "{}", out.describe());
    }
}

fn sign_file(d: &Daemon, key: &str, alg: &str, input: &Path, digest: bool, out: &Path) {
    let mut a = args!["sign", key, "--algorithm", alg, "--in", input, "--out", out];
    if digest {
        a.extend(args!["--digest"]);
    }
    d.hsmctl(a).expect_code(0);
}

#[tokio::test]
async fn hsmctl_signs_digests_and_ed25519() {
    let d = Daemon::start().await;
    let dir = d.scratch();
    let msg = write_file(&dir, "msg.bin", b"sign me with a digest");
    let digest = dir.join("msg.sha384");
    run(Command::new("openssl")
        .args(["dgst", "-sha384", "-binary", "-out"])
        .arg(&digest)
        .arg(&msg));

    let rsa = create(&d, "RSA_2048", None);
    let pem = export_pem(&d, &rsa);
    let sig = dir.join("rsa.sig");
    sign_file(&d, &rsa, "RSA_PSS_SHA_384", &digest, true, &sig);
    assert!(
        openssl_verify(SigningAlgorithm::RsaPssSha384, &pem, &msg, &sig),
        "openssl rejects the PSS signature made over a digest"
    );
    let out = d.hsmctl(args![
        "verify",
        rsa,
        "--algorithm",
        "RSA_PSS_SHA_384",
        "--in",
        digest,
        "--digest",
        "--signature",
        sig
    ]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "valid");

    if !d.offers(Need::Ed25519).await {
        return;
    }
    let ed = create(&d, "ED25519", None);
    let ed_pem = export_pem(&d, &ed);
    let ed_sig = dir.join("ed.sig");
    sign_file(&d, &ed, "ED25519", &msg, false, &ed_sig);
    assert_eq!(std::fs::read(&ed_sig).expect("sig").len(), 64);
    assert!(
        openssl_verify(SigningAlgorithm::Ed25519Sha512, &ed_pem, &msg, &ed_sig),
        "openssl rejects the Ed25519 signature"
    );
    // The proto name works too.
    sign_file(&d, &ed, "ED25519_SHA_512", &msg, false, &ed_sig);
}

#[tokio::test]
async fn hsmctl_errors_exit_2_with_a_message() {
    let d = Daemon::start().await;
    let dir = d.scratch();
    let msg = write_file(&dir, "m.txt", b"m");
    let never = dir.join("never.sig");
    // (arguments, what stderr must name: the stable reason, or clap's complaint)
    let sign_unknown = args![
        "sign",
        UNKNOWN_KEY,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg,
        "--out",
        never
    ];
    let verify_unknown = args![
        "verify",
        UNKNOWN_KEY,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg,
        "--signature",
        msg
    ];
    let bad_algorithm = args![
        "sign",
        UNKNOWN_KEY,
        "--algorithm",
        "NO_SUCH_ALG",
        "--in",
        msg,
        "--out",
        never
    ];
    let cases = [
        (sign_unknown, "KEY_NOT_FOUND"),
        (verify_unknown, "KEY_NOT_FOUND"),
        (
            args!["key", "disable", "alias/nothing-here"],
            "ALIAS_NOT_FOUND",
        ),
        (args!["key", "describe", "not-a-key-id"], "INVALID_KEY_ID"),
        (
            args!["key", "schedule-deletion", UNKNOWN_KEY, "--days", "7"],
            "KEY_NOT_FOUND",
        ),
        (args!["alias", "create", "x", UNKNOWN_KEY], "KEY_NOT_FOUND"),
        (bad_algorithm, "NO_SUCH_ALG"),
    ];
    for (a, reason) in cases {
        let out = d.hsmctl(a);
        out.expect_code(2);
        assert!(
            out.stderr.trim_start().starts_with("error:") && out.stderr.contains(reason),
            "stderr must start with `error:` and name {reason}\n{}",
            out.describe()
        );
    }
    assert!(
        !never.exists(),
        "a failed sign must not write a signature file"
    );
}

#[tokio::test]
async fn hsmctl_lifecycle_aliases_random_token_and_audit() {
    let d = Daemon::start().await;
    let key = create(&d, "EC_P256", None);
    d.hsmctl_ok(args!["alias", "create", "ops", key]);
    d.hsmctl_ok(args!["key", "disable", "alias/ops"]);
    let msg = write_file(&d.scratch(), "m.txt", b"m");
    let sig = d.scratch().join("m.sig");
    let sign = |k: &str| {
        d.hsmctl(args![
            "sign",
            k,
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            msg,
            "--out",
            sig
        ])
    };
    let out = sign(&key);
    out.expect_code(2);
    assert!(out.stderr.contains("KEY_DISABLED"), "{}", out.describe());
    d.hsmctl_ok(args!["key", "enable", key]);
    sign("alias/ops").expect_code(0);
    d.hsmctl_ok(args!["key", "schedule-deletion", key, "--days", "7"]);
    let out = sign(&key);
    out.expect_code(2);
    assert!(
        out.stderr.contains("KEY_PENDING_DELETION"),
        "{}",
        out.describe()
    );

    let random = d.hsmctl_ok(args!["random", "16"]);
    assert!(!random.is_empty(), "random prints the bytes");
    let info = d.hsmctl_ok(args!["token", "info"]);
    assert!(
        info.contains("hsmd-dev"),
        "token info names the token:\n{info}"
    );
    let json = d.hsmctl_ok(args!["-o", "json", "token", "info"]);
    serde_json::from_str::<serde_json::Value>(&json)
        .unwrap_or_else(|e| panic!("`-o json token info` is not JSON ({e}):\n{json}"));
    assert!(json.contains("hsmd-dev"), "{json}");
    let audit = d.hsmctl_ok(args!["-o", "json", "audit", "query"]);
    let mut records = 0;
    for line in audit.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("audit query -o json line is not JSON ({e}): {line}"));
        records += 1;
    }
    assert!(records >= 8, "audit query shows the calls made:\n{audit}");
    let verified = d.hsmctl_ok(args!["audit", "verify"]);
    assert!(verified.starts_with("ok"), "{verified}");
}
