//! Replicas on one SoftHSM2 token and one PostgreSQL (issue 17): what one replica does
//! the other sees (at once, or within the key cache's stated bound of 3 s), races
//! between them end in one state, and the cluster's audit is one chain per node that
//! `hsmctl audit verify` checks node by node. One PostgreSQL server for the whole
//! binary, a database of its own per test.

use std::time::{Duration, Instant};

use hsmd_e2e::cluster::Cluster;
use hsmd_e2e::postgres;
use hsmd_e2e::v1::{
    CancelKeyDeletionRequest, CreateKeyRequest, DescribeKeyRequest, DisableKeyRequest, KeySpec,
    KeyState, KeyUsage, ScheduleKeyDeletionRequest, SignRequest, SigningAlgorithm,
    UpdateAliasRequest,
};
use hsmd_e2e::{expect_ok, reason_of};

/// The key cache's bound (README "Running several replicas"), and slack for a loaded
/// machine.
const STALENESS_BOUND: Duration = Duration::from_secs(3);
const SLACK: Duration = Duration::from_secs(2);

fn ec_key(alias: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        spec: KeySpec::EcP256 as i32,
        usage: KeyUsage::SignVerify as i32,
        alias: alias.into(),
        ..Default::default()
    }
}

fn sign(key: &str) -> SignRequest {
    SignRequest {
        key_id: key.into(),
        algorithm: SigningAlgorithm::EcdsaSha256 as i32,
        message: b"replicated".to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_one_replica_does_the_other_sees() {
    let mut c = Cluster::new(postgres::shared());
    c.start("a").await;
    c.start("b").await;
    let (a, b) = (c.node("a"), c.node("b"));

    // A key created through A signs through B at once.
    let key = hsmd_e2e::keys::create(&mut a.keys(), ec_key("alias/app"), "on a").await;
    let (signed, _) = expect_ok(b.keys().sign(sign(&key)).await, "Sign on b");
    assert!(!signed.signature.is_empty());
    let (by_alias, _) = expect_ok(b.keys().sign(sign("alias/app")).await, "Sign alias on b");
    assert_eq!(by_alias.key_id, key);

    // An alias moved on B is seen by A on its next call.
    let other = hsmd_e2e::keys::create(&mut b.keys(), ec_key(""), "on b").await;
    expect_ok(
        b.keys()
            .update_alias(UpdateAliasRequest {
                alias_name: "alias/app".into(),
                target_key_id: other.clone(),
            })
            .await,
        "UpdateAlias on b",
    );
    let (moved, _) = expect_ok(a.keys().sign(sign("alias/app")).await, "Sign alias on a");
    assert_eq!(moved.key_id, other, "A follows the alias B moved");

    // A key disabled on A is refused by B within the bound (B's cache held it).
    expect_ok(b.keys().sign(sign(&key)).await, "Sign on b, cached");
    expect_ok(
        a.keys()
            .disable_key(DisableKeyRequest {
                key_id: key.clone(),
            })
            .await,
        "DisableKey on a",
    );
    let disabled_at = Instant::now();
    let refused = loop {
        match b.keys().sign(sign(&key)).await {
            Err(s) => break s,
            Ok(_) => {
                assert!(
                    disabled_at.elapsed() < STALENESS_BOUND + SLACK,
                    "B still signs with a key A disabled {:?} ago",
                    disabled_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    assert_eq!(reason_of(&refused).as_deref(), Some("KEY_DISABLED"));
    eprintln!(
        "B refused the key A disabled {:?} after DisableKey answered",
        disabled_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_races_between_replicas_end_in_one_state() {
    let mut c = Cluster::new(postgres::shared());
    c.start("a").await;
    c.start("b").await;
    let (a, b) = (c.node("a"), c.node("b"));
    for round in 0..5 {
        let key = hsmd_e2e::keys::create(&mut a.keys(), ec_key(""), "race").await;
        let schedule = |node: &hsmd_e2e::cluster::Node| {
            let mut k = node.keys();
            let key = key.clone();
            async move {
                k.schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: key,
                    pending_window_days: 7,
                })
                .await
                .is_ok()
            }
        };
        let (x, y) = tokio::join!(schedule(a), schedule(b));
        assert_eq!(
            usize::from(x) + usize::from(y),
            1,
            "round {round}: one ScheduleKeyDeletion wins"
        );
        let cancel = |node: &hsmd_e2e::cluster::Node| {
            let mut k = node.keys();
            let key = key.clone();
            async move {
                k.cancel_key_deletion(CancelKeyDeletionRequest { key_id: key })
                    .await
                    .is_ok()
            }
        };
        let (x, y) = tokio::join!(cancel(a), cancel(b));
        assert_eq!(
            usize::from(x) + usize::from(y),
            1,
            "round {round}: one CancelKeyDeletion wins"
        );
        // Both replicas see the same state.
        for node in [a, b] {
            let (d, _) = expect_ok(
                node.keys()
                    .describe_key(DescribeKeyRequest {
                        key_id: key.clone(),
                    })
                    .await,
                "DescribeKey",
            );
            let state = d.key.map(|k| k.state).unwrap_or_default();
            assert!(
                state == KeyState::Disabled as i32 || state == KeyState::Enabled as i32,
                "round {round}: state {state}"
            );
        }
    }
}

/// Input hashes of the successful Sign records in replica `node`'s chain.
fn signed_inputs(c: &Cluster, node: &str) -> std::collections::HashSet<String> {
    let dir = c.data_dir().join("audit").join(node);
    let mut out = std::collections::HashSet::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("audit.log") || name.contains(".torn-") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for line in hsmd_e2e::audit::parse_lines(&text) {
            assert_eq!(line.str("node"), node, "every record names its node");
            if line.str("method").ends_with("/Sign") && line.str("outcome") == "ok" {
                out.insert(line.str("input_sha256").to_string());
            }
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_replica_mid_load_moves_calls_and_loses_no_audit_record() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut c = Cluster::new(postgres::shared());
    c.start("a").await;
    c.start("b").await;
    let key = hsmd_e2e::keys::create(&mut c.node("a").keys(), ec_key(""), "load").await;
    // The profile lists a then b: the client starts on a.
    let profile = hsm_client::Profile::load(c.profile_path()).expect("profile");
    assert_eq!(profile.endpoint_list().len(), 2, "{profile:?}");
    let client = hsm_client::Client::connect(&profile)
        .await
        .expect("connect");
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, key, done) = (client.clone(), key.clone(), done.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..40 {
                    let message = format!("worker {w} call {n}").into_bytes();
                    let r = client
                        .sign(
                            &key,
                            hsm_client::v1::SigningAlgorithm::EcdsaSha256,
                            hsm_client::v1::MessageType::Raw,
                            message.clone(),
                        )
                        .await;
                    match r {
                        Ok(sig) => {
                            assert!(!sig.is_empty());
                            acknowledged.push(message);
                        }
                        Err(e) => panic!("worker {w} call {n} failed: {e}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                acknowledged
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill("a");
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.expect("worker"));
    }
    assert_eq!(acknowledged.len(), 8 * 40, "every call answered, through b");

    // A restarts (moving any torn tail aside); then no acknowledged call lacks its
    // record in a's or b's chain, and both had some.
    c.start("a").await;
    let (in_a, in_b) = (signed_inputs(&c, "a"), signed_inputs(&c, "b"));
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "{} {}",
        in_a.len(),
        in_b.len()
    );
    for m in &acknowledged {
        let h = sha256_hex(m);
        assert!(
            in_a.contains(&h) || in_b.contains(&h),
            "no record of {:?}",
            String::from_utf8_lossy(m)
        );
    }

    // Each replica verifies its own chain: one line per node.
    let online = c.hsmctl(["audit", "verify"]);
    assert!(online.success(), "{}", online.describe());
    let lines: Vec<&str> = online.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", online.stdout);
    assert!(lines[0].starts_with("ok: node a: "), "{}", online.stdout);
    assert!(lines[1].starts_with("ok: node b: "), "{}", online.stdout);
    // And offline, the cluster's audit folder is one chain per node.
    let audit_dir = c.data_dir().join("audit");
    let offline = c.hsmctl([
        std::ffi::OsStr::new("audit"),
        "verify".as_ref(),
        audit_dir.as_os_str(),
    ]);
    assert!(offline.success(), "{}", offline.describe());
    let lines: Vec<&str> = offline.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", offline.stdout);
    assert!(lines[0].starts_with("ok: node a: "), "{}", offline.stdout);
    assert!(lines[1].starts_with("ok: node b: "), "{}", offline.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_racing_on_two_replicas_leave_one_material_set() {
    use hsmd_e2e::import::{
        create_external, import_material_on, openssl_kcv, openssl_rand, openssl_wrap, parameters,
    };
    use hsmd_e2e::v1::{KeyOrigin, WrappingAlgorithm};

    let mut c = Cluster::new(postgres::shared());
    c.start("a").await;
    c.start("b").await;
    let (a, b) = (c.node("a"), c.node("b"));
    let dir = tempfile::tempdir().unwrap();
    let alg = WrappingAlgorithm::RsaesOaepSha1;
    let (mut ka, mut kb) = (a.keys(), b.keys());
    for round in 0..3 {
        let key = create_external(&mut ka, KeySpec::Aes256, KeyUsage::EncryptDecrypt).await;
        // Tokens issued on both replicas at once: only the newer one stays valid.
        let ((pa, pem_a), (pb, pem_b)) = tokio::join!(
            parameters(&mut ka, dir.path(), &key, alg),
            parameters(&mut kb, dir.path(), &key, alg)
        );
        let raws: Vec<Vec<u8>> = ["a", "b"]
            .iter()
            .map(|n| openssl_rand(dir.path(), &format!("r{round}{n}"), 32))
            .collect();
        let wa = openssl_wrap(
            dir.path(),
            &pem_a,
            alg,
            &dir.path().join(format!("r{round}a")),
        );
        let wb = openssl_wrap(
            dir.path(),
            &pem_b,
            alg,
            &dir.path().join(format!("r{round}b")),
        );
        let (ra, rb) = tokio::join!(
            import_material_on(&mut ka, &key, &pa.import_token, wa),
            import_material_on(&mut kb, &key, &pb.import_token, wb)
        );
        let winners: Vec<usize> = [&ra, &rb]
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {ra:?} {rb:?}");
        for loser in [&ra, &rb].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                loser.code() == tonic::Code::FailedPrecondition
                    || loser.code() == tonic::Code::InvalidArgument,
                "round {round}: {loser:?}"
            );
        }
        // Both replicas describe the winner's material, and only it.
        let kcv = openssl_kcv(dir.path(), &raws[winners[0]]);
        for node in [a, b] {
            let (d, _) = expect_ok(
                node.keys()
                    .describe_key(DescribeKeyRequest {
                        key_id: key.clone(),
                    })
                    .await,
                "DescribeKey",
            );
            let meta = d.key.unwrap();
            assert_eq!(meta.origin, KeyOrigin::External as i32);
            assert_eq!(meta.state, KeyState::Enabled as i32, "round {round}");
            assert_eq!(meta.key_check_value, kcv, "round {round}");
        }
    }
}

/// Signs through each of `nodes` from 3 tasks per node for `for_how_long`: how many
/// calls were answered and how many refused RATE_LIMITED (nothing else may happen).
async fn hammer(c: &Cluster, nodes: &[&str], key: &str, for_how_long: Duration) -> (u64, u64) {
    let until = Instant::now() + for_how_long;
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..3 {
            let mut keys = c.node(node).keys();
            let req = sign(key);
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited) = (0u64, 0u64);
                while Instant::now() < until {
                    match keys.sign(req.clone()).await {
                        Ok(_) => ok += 1,
                        Err(s) => {
                            assert_eq!(reason_of(&s).as_deref(), Some("RATE_LIMITED"), "{s:?}");
                            limited += 1;
                        }
                    }
                }
                (ok, limited)
            }));
        }
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, limited) = t.await.unwrap();
        total = (total.0 + ok, total.1 + limited);
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_is_the_clusters_not_each_replicas() {
    const RATE: f64 = 20.0;
    const BURST: f64 = 10.0;
    let mut c = Cluster::new(postgres::shared());
    c.set_env("RATE_LIMITS__SIGN", "20/s burst 10");
    c.start("a").await;
    c.start("b").await;
    let key = hsmd_e2e::keys::create(&mut c.node("a").keys(), ec_key(""), "limited").await;
    let span = Duration::from_secs(2);
    for nodes in [&["a"][..], &["a", "b"][..]] {
        // A fresh bucket for each round: wait until it is full again.
        tokio::time::sleep(Duration::from_secs_f64(BURST / RATE + 0.2)).await;
        let started = Instant::now();
        let (ok, limited) = hammer(&c, nodes, &key, span).await;
        let elapsed = started.elapsed().as_secs_f64();
        let most = BURST + RATE * elapsed;
        eprintln!(
            "{} replica(s): {ok} answered, {limited} limited in {elapsed:.2} s (at most {most:.0})",
            nodes.len()
        );
        assert!(limited > 0, "the load is over the limit");
        assert!(
            (ok as f64) <= most + 1.0,
            "{} replica(s) answered {ok} > {most:.1}",
            nodes.len()
        );
        assert!(
            (ok as f64) >= RATE * span.as_secs_f64() * 0.5,
            "{} replica(s) answered only {ok}",
            nodes.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_signing_one_image_at_once_add_one_signature() {
    use hsmd_e2e::registry::{self, Registry};
    use hsmd_e2e::v1::image_signing_service_client::ImageSigningServiceClient;
    use hsmd_e2e::v1::signing_policy_service_client::SigningPolicyServiceClient;
    use hsmd_e2e::v1::{
        CreateSignaturePolicyRequest, ImageSignatureStatus, SignImageRequest, SignatureTrigger,
        VerifyImageRequest,
    };

    registry::require_registry_tools();
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(&dir.path().join("registry"), None);
    let mut c = Cluster::new(postgres::shared());
    c.add_args(["--registry".to_string(), format!("http://{}", reg.addr())]);
    c.start("a").await;
    c.start("b").await;
    let key = hsmd_e2e::keys::create(&mut c.node("a").keys(), ec_key(""), "images").await;
    expect_ok(
        SigningPolicyServiceClient::new(c.node("a").channel())
            .create_signature_policy(CreateSignaturePolicyRequest {
                namespace: "team".into(),
                name: "team-policy".into(),
                key_id: key.clone(),
                trigger: SignatureTrigger::Manual as i32,
                ..Default::default()
            })
            .await,
        "CreatePolicy on a",
    );
    for round in 0..3 {
        let image = registry::oci_image(dir.path(), format!("round {round}").as_bytes(), "v1");
        registry::push(&reg, &image, &format!("team/app{round}:v1"));
        let reference = format!("{}/team/app{round}:v1", reg.addr());
        // Three SignImage calls on each replica at once (the policy was made on a).
        let mut calls = Vec::new();
        for node in ["a", "b", "a", "b", "a", "b"] {
            let mut client = ImageSigningServiceClient::new(c.node(node).channel());
            let reference = reference.clone();
            calls.push(tokio::spawn(async move {
                client
                    .sign_image(SignImageRequest {
                        reference,
                        key_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().signed)
            }));
        }
        let mut added = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(signed) => added += usize::from(signed),
                Err(s) => panic!("round {round}: SignImage failed: {s:?}"),
            }
        }
        assert_eq!(
            added, 1,
            "round {round}: one signature added, five found it"
        );
        let (v, _) = expect_ok(
            ImageSigningServiceClient::new(c.node("b").channel())
                .verify_image(VerifyImageRequest {
                    reference: reference.clone(),
                    key_id: String::new(),
                })
                .await,
            "VerifyImage on b",
        );
        assert_eq!(v.status, ImageSignatureStatus::ImageSigned as i32, "{v:?}");
        assert_eq!(v.signatures.len(), 1, "round {round}: {v:?}");
    }
}
