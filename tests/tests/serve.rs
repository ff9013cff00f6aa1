//! `hsmd serve --config FILE`: runs from a config file on a data folder `hsmd dev`
//! provisioned, and refuses a bad config at start-up with a message that names the
//! setting and the problem (module, token label, PIN).

use std::{ffi::OsStr, os::unix::fs::PermissionsExt, path::PathBuf};

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    expect_ok,
    tools::free_port,
    v1::{DescribeKeyRequest, KeySpec, MessageType, SigningAlgorithm},
};

/// `DIR/hsmd.toml` with `edit` applied, written to the scratch folder.
fn config_with(d: &Daemon, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let text = std::fs::read_to_string(d.data_dir().join("hsmd.toml")).expect("hsmd.toml");
    let mut table: toml::Table = text.parse().expect("hsmd.toml is TOML");
    edit(&mut table);
    let path = d.scratch().join(name);
    std::fs::write(&path, table.to_string()).expect("write config");
    path
}

fn hsm(table: &mut toml::Table) -> &mut toml::Table {
    table
        .get_mut("hsm")
        .and_then(|v| v.as_table_mut())
        .expect("[hsm] section")
}

#[tokio::test]
async fn serve_runs_from_the_config_file() {
    let mut d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "served").await;
    let port = free_port();
    let config = config_with(&d, "serve.toml", |t| {
        t.insert("listen".into(), format!("127.0.0.1:{port}").into());
    });
    d.restart_as_serve(&config).await;

    let req = DescribeKeyRequest {
        key_id: "alias/served".into(),
    };
    let (resp, _) = expect_ok(d.keys().describe_key(req).await, "DescribeKey under serve");
    assert_eq!(resp.key.expect("key").key_id, key);
    let alg = SigningAlgorithm::EcdsaSha256;
    expect_ok(
        sign(&mut d.keys(), &key, alg, MessageType::Raw, b"served").await,
        "Sign under serve",
    );
    let out = d.hsmctl(["audit", "verify"]);
    assert!(out.success(), "{}", out.describe());
    d.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_bad_config_naming_the_problem() {
    let mut d = Daemon::start().await;
    d.stop().await;
    let scratch = d.scratch();
    let wrong_pin = scratch.join("wrong-pin");
    std::fs::write(&wrong_pin, "99999999\n").expect("write pin");
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let open_pin = scratch.join("open-pin");
    std::fs::copy(d.data_dir().join("pin"), &open_pin).expect("copy pin");
    std::fs::set_permissions(&open_pin, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let wp = wrong_pin.display().to_string();
    let op = open_pin.display().to_string();
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "unknown key",
            Box::new(|t| {
                hsm(t).insert("bogus_setting".into(), 1.into());
            }),
            vec!["bogus_setting"],
        ),
        (
            "missing module",
            Box::new(|t| {
                hsm(t).insert("module".into(), "/nonexistent/libnothing.so".into());
            }),
            vec!["/nonexistent/libnothing.so"],
        ),
        (
            "unknown token label",
            Box::new(|t| {
                hsm(t).insert("token_label".into(), "no-such-token".into());
            }),
            vec!["no-such-token"],
        ),
        (
            "wrong PIN",
            Box::new(move |t| {
                hsm(t).insert("pin_file".into(), wp.into());
            }),
            vec!["libsofthsm2.so", "hsmd-dev", "PIN"],
        ),
        (
            "PIN file readable by others",
            Box::new(move |t| {
                hsm(t).insert("pin_file".into(), op.into());
            }),
            vec!["pin_file", "0600"],
        ),
    ];
    for (i, (what, edit, words)) in cases.into_iter().enumerate() {
        let config = config_with(&d, &format!("bad-{i}.toml"), |t| {
            t.insert("listen".into(), format!("127.0.0.1:{}", free_port()).into());
            edit(t);
        });
        let out = d
            .run_hsmd_to_exit(&[
                OsStr::new("serve"),
                OsStr::new("--config"),
                config.as_os_str(),
            ])
            .await;
        assert!(
            !out.success(),
            "{what}: hsmd serve started with a bad config\n{}",
            out.describe()
        );
        for word in words {
            assert!(
                out.stderr.to_lowercase().contains(&word.to_lowercase()),
                "{what}: the start-up error should mention {word:?}\n{}",
                out.describe()
            );
        }
        assert!(
            !out.stderr.contains("panicked"),
            "{what}: hsmd panicked instead of reporting the problem\n{}",
            out.describe()
        );
    }
}
