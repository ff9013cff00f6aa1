//! `hsmctl` bring your own key: `key create --origin external`, the three steps
//! (`import params`, `import wrap`, `import material`), the one-step `import key`, and
//! `key delete-material`, against a real daemon; the imported keys are checked with
//! openssl (signature verification, AES key check value).

use hsmd_e2e::{
    Daemon, Need,
    algorithms::openssl_verify,
    import::{openssl_genpkey, openssl_kcv, openssl_rand},
    tools::write_file,
    v1::{KeySpec, SigningAlgorithm},
};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("hsmctl printed no JSON ({e}): {text}"))
}

fn create_external(d: &Daemon, spec: &str, usage: &str) -> String {
    let out = d.hsmctl_ok([
        "key", "create", "--spec", spec, "--usage", usage, "--origin", "external", "-o", "json",
    ]);
    let v = json(&out);
    assert_eq!(v["state"], "PENDING_IMPORT", "{out}");
    assert_eq!(v["origin"], "EXTERNAL", "{out}");
    v["key_id"].as_str().expect("key_id").to_string()
}

#[tokio::test]
async fn hsmctl_imports_in_three_steps_and_in_one() {
    let d = Daemon::start().await;
    if !d.offers(Need::Import).await {
        return;
    }
    let dir = d.scratch();

    // Three steps, EC P-256 from an openssl PEM file (hsmctl converts it to PKCS#8).
    let key = create_external(&d, "EC_P256", "SIGN_VERIFY");
    let material = openssl_genpkey(&dir, "ec", KeySpec::EcP256);
    let pem = dir.join("ec.pem");
    let params = dir.join("params");
    d.hsmctl_ok([
        "import",
        "params",
        &key,
        "--wrapping-algorithm",
        "RSA_AES_KEY_WRAP_SHA_1",
        "--out-dir",
        params.to_str().expect("utf-8"),
    ]);
    for f in ["wrapping-key.pem", "wrapping-key.der", "import-token.bin"] {
        assert!(params.join(f).is_file(), "import params wrote {f}");
    }
    let wrapped = dir.join("ec.wrapped");
    let public = dir.join("ec.spki");
    let out = d.hsmctl([
        "import",
        "wrap",
        "--public-key",
        params.join("wrapping-key.pem").to_str().expect("utf-8"),
        "--algorithm",
        "RSA_AES_KEY_WRAP_SHA_1",
        "--in",
        pem.to_str().expect("utf-8"),
        "--out",
        wrapped.to_str().expect("utf-8"),
        "--write-public-key",
        public.to_str().expect("utf-8"),
    ]);
    assert!(out.success(), "import wrap\n{}", out.describe());
    assert_eq!(std::fs::read(&public).expect("spki"), material.public_der);
    let out = d.hsmctl_ok([
        "import",
        "material",
        &key,
        "--token",
        params.join("import-token.bin").to_str().expect("utf-8"),
        "--material",
        wrapped.to_str().expect("utf-8"),
        "--valid-to",
        "+1h",
        "-o",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["state"], "ENABLED", "{out}");
    assert!(!v["valid_to"].is_null(), "valid_to shown: {out}");
    let msg = write_file(&dir, "msg", b"hsmctl import");
    let sig = dir.join("sig");
    d.hsmctl_ok([
        "sign",
        &key,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg.to_str().expect("utf-8"),
        "--out",
        sig.to_str().expect("utf-8"),
    ]);
    assert!(openssl_verify(
        SigningAlgorithm::EcdsaSha256,
        &material.public_pem,
        &msg,
        &sig
    ));

    // delete-material, then `import key` of the same material in one step.
    let out = d.hsmctl_ok(["key", "delete-material", &key, "-o", "json"]);
    assert_eq!(json(&out)["state"], "PENDING_IMPORT", "{out}");
    let out = d.hsmctl_ok(["key", "describe", &key]);
    assert!(out.contains("PENDING_IMPORT"), "{out}");
    let out = d.hsmctl_ok([
        "import",
        "key",
        &key,
        "--in",
        pem.to_str().expect("utf-8"),
        "-o",
        "json",
    ]);
    assert_eq!(json(&out)["state"], "ENABLED", "{out}");

    // Another key's material is refused, with its reason on stderr.
    let other = openssl_genpkey(&dir, "other", KeySpec::EcP256);
    d.hsmctl_ok(["key", "delete-material", &key]);
    let out = d.hsmctl([
        "import",
        "key",
        &key,
        "--in",
        dir.join("other.pem").to_str().expect("utf-8"),
    ]);
    assert!(
        !out.success(),
        "different material imported\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("KEY_MATERIAL_MISMATCH"),
        "{}",
        out.describe()
    );
    drop(other);

    // AES-256 raw bytes in one step; the check value is openssl's.
    let aes = create_external(&d, "AES_256", "ENCRYPT_DECRYPT");
    let raw = openssl_rand(&dir, "aes.key", 32);
    let out = d.hsmctl_ok([
        "import",
        "key",
        &aes,
        "--in",
        dir.join("aes.key").to_str().expect("utf-8"),
        "-o",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["state"], "ENABLED", "{out}");
    assert_eq!(v["key_check_value"], openssl_kcv(&dir, &raw), "{out}");
}
