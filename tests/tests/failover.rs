//! Client fail-over across replicas (issue 17, client side), with hsmctl against a real
//! daemon: a profile listing a dead endpoint before the live one still answers, and
//! `--endpoint` pins one endpoint (no fail-over from it).

use hsmd_e2e::tools::{free_port, run_unchecked, workspace_bin};
use hsmd_e2e::{CmdOutput, Daemon};

/// hsmctl with this profile (not the daemon's own).
fn hsmctl(profile: &str, args: &[&str]) -> CmdOutput {
    run_unchecked(
        std::process::Command::new(workspace_bin("hsmctl"))
            .arg("--profile")
            .arg(profile)
            .args(args)
            .env_remove("HSMCTL_PROFILE"),
    )
}

#[tokio::test]
async fn a_profile_of_several_endpoints_fails_over_and_endpoint_pins_one() {
    let d = Daemon::start().await;
    let dead = format!("https://127.0.0.1:{}", free_port());
    let live = d.profile().endpoint.clone();
    let text = std::fs::read_to_string(d.profile_path()).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    table.remove("endpoint");
    table.insert(
        "endpoints".into(),
        toml::Value::Array(vec![dead.clone().into(), live.clone().into()]),
    );
    let profile = d.scratch().join("cluster.toml");
    std::fs::write(&profile, toml::to_string(&table).unwrap()).unwrap();
    let p = profile.to_str().unwrap();

    let out = hsmctl(p, &["-v", "random", "16"]);
    assert!(
        out.success(),
        "fails over to the live replica: {}",
        out.describe()
    );
    assert_eq!(
        out.stdout.trim().len(),
        32,
        "16 bytes in hex: {}",
        out.stdout
    );

    let key = hsmctl(
        p,
        &[
            "key",
            "create",
            "--spec",
            "EC_P256",
            "--usage",
            "sign-verify",
        ],
    );
    assert!(
        key.success(),
        "CreateKey (with its idempotency token) fails over: {}",
        key.describe()
    );
    assert_eq!(
        d.hsmctl_ok(["key", "list"])
            .matches(key.stdout.trim())
            .count(),
        1,
        "one key made"
    );

    let pinned = hsmctl(p, &["--endpoint", &dead, "random", "16"]);
    assert_eq!(
        pinned.code,
        Some(2),
        "--endpoint pins the dead one: {}",
        pinned.describe()
    );
    let ok = hsmctl(p, &["--endpoint", &live, "random", "16"]);
    assert!(ok.success(), "{}", ok.describe());

    let both = format!(
        "endpoint = \"{live}\"\n{}",
        toml::to_string(&table).unwrap()
    );
    let bad = d.scratch().join("both.toml");
    std::fs::write(&bad, both).unwrap();
    let refused = hsmctl(bad.to_str().unwrap(), &["random", "16"]);
    assert_eq!(refused.code, Some(2));
    assert!(refused.stderr.contains("endpoints"), "{}", refused.stderr);
}
