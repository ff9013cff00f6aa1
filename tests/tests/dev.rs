//! What `hsmd dev` provisions in its data folder, what it prints, and what the token
//! service reports about the SoftHSM2 token it runs on.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon, expect_ok,
    tools::run,
    v1::{GetTokenInfoRequest, KeySpec},
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn dev_provisions_the_data_dir_and_prints_where_it_listens() {
    let d = Daemon::start().await;
    let dir = d.data_dir();
    for f in [
        "softhsm2.conf",
        "pin",
        "tls/ca.pem",
        "tls/ca.key",
        "tls/server.pem",
        "tls/server.key",
        "tls/client.pem",
        "tls/client.key",
        "hsmd.toml",
        "hsmd.db",
        "client.toml",
    ] {
        assert!(dir.join(f).is_file(), "hsmd dev did not create {f}");
    }
    assert!(dir.join("tokens").is_dir(), "no tokens/ folder");
    assert!(
        std::fs::read_dir(dir.join("tokens"))
            .expect("tokens")
            .next()
            .is_some(),
        "tokens/ is empty"
    );
    assert_eq!(
        mode(&dir.join("pin")),
        0o600,
        "the PIN file must be mode 0600"
    );
    for key in ["tls/ca.key", "tls/server.key", "tls/client.key"] {
        assert_eq!(
            mode(&dir.join(key)) & 0o077,
            0,
            "{key} is readable by group or others"
        );
    }
    let conf = std::fs::read_to_string(dir.join("softhsm2.conf")).expect("softhsm2.conf");
    assert!(
        conf.contains(&dir.join("tokens").display().to_string()),
        "softhsm2.conf does not point at DIR/tokens:\n{conf}"
    );
    let config: toml::Table = std::fs::read_to_string(dir.join("hsmd.toml"))
        .expect("hsmd.toml")
        .parse()
        .expect("hsmd.toml is TOML");
    let rules = config["policy"]["rules"]
        .as_array()
        .expect("[[policy.rules]]");
    let everything = rules.iter().any(|r| {
        let has = |field: &str, v: &str| {
            r[field]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v)))
        };
        has("principals", ADMIN_PRINCIPAL) && has("actions", "*") && has("keys", "*")
    });
    assert!(everything, "the dev client may do everything: {rules:?}");

    let p = d.profile();
    assert!(
        p.endpoint.starts_with("https://127.0.0.1:") && !p.endpoint.ends_with(":0"),
        "endpoint {}",
        p.endpoint
    );
    assert_eq!(p.server_name, "localhost");
    for path in [&p.ca_cert, &p.client_cert, &p.client_key] {
        assert!(
            path.is_absolute() && path.is_file(),
            "profile path {} is not an absolute file",
            path.display()
        );
    }
    let san = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&p.client_cert));
    assert!(
        san.stdout.contains(&format!("URI:{ADMIN_PRINCIPAL}")),
        "client cert SAN:\n{}",
        san.stdout
    );

    // The one line on stdout names the endpoint and the profile.
    let profile = d.profile_path().display().to_string();
    let mut stdout = String::new();
    for _ in 0..100 {
        stdout = d.stdout_text();
        if stdout.contains(&p.endpoint) && stdout.contains(&profile) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = stdout.lines().find(|l| l.contains(&p.endpoint));
    assert!(
        line.is_some_and(|l| l.contains(&profile)),
        "stdout has no line with both {} and {profile}:\n{stdout}",
        p.endpoint
    );
}

#[tokio::test]
async fn token_info_reports_softhsm_and_what_it_offers() {
    let d = Daemon::start().await;
    let (info, _) = expect_ok(
        d.token().get_token_info(GetTokenInfoRequest {}).await,
        "GetTokenInfo",
    );
    assert_eq!(info.label, "hsmd-dev");
    assert!(
        info.manufacturer.contains("SoftHSM"),
        "manufacturer {:?}",
        info.manufacturer
    );
    assert!(
        info.module_path.ends_with("libsofthsm2.so"),
        "module {:?}",
        info.module_path
    );
    assert!(info.session_pool_size >= 1, "no sessions in the pool");
    assert!(!info.capabilities.is_empty(), "no probed capabilities");
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
        KeySpec::EcP256,
        KeySpec::EcP384,
        KeySpec::Ed25519,
    ] {
        assert!(
            info.key_specs.contains(&(spec as i32)),
            "{spec:?} not offered: {:?}",
            info.key_specs
        );
    }
    assert!(
        !info.key_specs.contains(&(KeySpec::Sm2 as i32)),
        "SM2 offered on SoftHSM2, which has no SM2 mechanisms"
    );
    for alg in hsmd_e2e::algorithms::ALL_ALGORITHMS {
        assert!(
            info.signing_algorithms.contains(&(alg as i32)),
            "{alg:?} not offered"
        );
    }
    assert!(
        info.refusals.is_empty(),
        "SoftHSM2 refuses nothing hsmd has: {:?}",
        info.refusals
    );
    for row in ["session key objects (CKA_TOKEN false)", "C_CopyObject"] {
        assert!(
            info.capabilities
                .iter()
                .any(|c| c.mechanism == row && c.supported),
            "SoftHSM2 has {row}: {:?}",
            info.capabilities
        );
    }
    assert!(
        info.usage_enforced_by_token,
        "SoftHSM2 keeps CKA_DECRYPT false"
    );
    let out = d.hsmctl(["token", "info"]);
    assert!(
        out.stdout.contains("refused: nothing"),
        "{}",
        out.describe()
    );
    assert!(
        out.success() && out.stdout.contains("hsmd-dev"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn sm2_is_refused_as_unsupported_on_softhsm() {
    let d = Daemon::start().await;
    let r = d
        .keys()
        .create_key(hsmd_e2e::v1::CreateKeyRequest {
            spec: KeySpec::Sm2 as i32,
            usage: hsmd_e2e::v1::KeyUsage::SignVerify as i32,
            ..Default::default()
        })
        .await;
    d.assert_refused(
        r,
        "/hsmd.v1.KeyService/CreateKey",
        tonic::Code::InvalidArgument,
        "UNSUPPORTED_KEY_SPEC",
    );
}
