//! Rate limits and client retries: a burst over the limit gets RESOURCE_EXHAUSTED with
//! a retry delay (RetryInfo and `retry-after-ms`), audited as throttled; hsm-client with
//! retries completes every call; a CreateKey whose answer is lost and is retried makes
//! exactly one key.

use std::sync::Arc;
use std::time::Duration;

use hsm_client::{Client, Profile, RetryPolicy};
use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    configured::Proxy,
    configured::with_admin_policy,
    reason_of,
    v1::{CreateKeyRequest, KeySpec, KeyUsage, ListKeysRequest, MessageType, SigningAlgorithm},
};
use tonic::Code;
use tonic_types::StatusExt;

const LIMITS: &str = r#"
[rate_limits]
sign = "10/s burst 5"
"#;

async fn client(d: &Daemon, retry: RetryPolicy) -> Client {
    let profile = Profile::load(d.profile_path()).expect("profile");
    Client::connect(&profile)
        .await
        .expect("connect")
        .with_retry(retry)
}

#[tokio::test]
async fn burst_over_the_limit_is_throttled_with_a_retry_delay() {
    let (d, _) = Daemon::start_configured(&with_admin_policy(LIMITS)).await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "limited").await;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let mut keys = d.keys();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            sign(
                &mut keys,
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                &[i],
            )
            .await
        }));
    }
    let (mut ok, mut throttled) = (0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => throttled.push(s),
        }
    }
    assert!(ok >= 5, "the burst goes through ({ok})");
    assert!(
        throttled.len() >= 10,
        "calls over the burst are refused ({ok} ok)"
    );
    for s in &throttled {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason_of(s).as_deref(), Some("RATE_LIMITED"));
        let delay = s
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo in the details");
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(2),
            "{delay:?}"
        );
        let ms: u64 = s
            .metadata()
            .get("retry-after-ms")
            .expect("retry-after-ms")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2000).contains(&ms), "{ms}");
    }
    // Throttled calls are audited (they share a group commit: give it a moment).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rid = throttled[0]
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    d.assert_audited(
        &rid,
        "/hsmd.v1.KeyService/Sign",
        "throttled",
        "RESOURCE_EXHAUSTED",
        "RATE_LIMITED",
    );
    let n = d
        .audit_lines()
        .iter()
        .filter(|l| l.str("outcome") == "throttled")
        .count();
    assert_eq!(n, throttled.len());
}

#[tokio::test]
async fn client_with_retries_completes_every_call() {
    let (d, _) = Daemon::start_configured(&with_admin_policy(LIMITS)).await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "retried").await;
    let retry = RetryPolicy {
        max_attempts: 30,
        initial_delay_ms: 20,
        max_delay_ms: 500,
        deadline_ms: 30_000,
        ..Default::default()
    };
    let c = Arc::new(client(&d, retry).await);
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let (c, key) = (c.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            c.sign(
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                vec![i],
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every call completes with retries");
    }
    assert!(c.retries() > 0, "the client had to retry");

    // Non-retryable errors are never retried (DescribeKey: manage class, not limited).
    let none = client(&d, RetryPolicy::none()).await;
    let err = none
        .describe_key("alias/nope")
        .await
        .expect_err("no such alias");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(none.retries(), 0);

    // hsmctl: --max-retries and -v.
    let out = d.hsmctl(["-v", "--max-retries", "0", "random", "8"]);
    assert!(out.success(), "{}", out.describe());
    let msg = d.scratch().join("m");
    std::fs::write(&msg, b"x").unwrap();
    // hsmctl must meet an empty bucket: a drainer keeps taking every token until the
    // audit log holds a throttled record it did not cause (hsmctl's first attempt), then
    // stops so that hsmctl's retry gets through. hsmctl runs in a thread of its own so
    // the drainer keeps running while it starts up, however slow the machine.
    let drainer = client(&d, RetryPolicy::none()).await;
    let throttled_in_log = || {
        d.audit_lines_if_any()
            .iter()
            .filter(|l| l.str("outcome") == "throttled")
            .count()
    };
    let drain_once = || async {
        drainer
            .sign(
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                vec![1],
            )
            .await
            .is_err()
    };
    let mut retried = false;
    for _ in 0..5 {
        // Lazy records of earlier calls are written within 25 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = throttled_in_log();
        let mut own_throttled = 0;
        while !drain_once().await {}
        own_throttled += 1;
        let mut cmd = std::process::Command::new(hsmd_e2e::tools::workspace_bin("hsmctl"));
        cmd.arg("--profile")
            .arg(d.profile_path())
            .args(["-v", "--max-retries", "20", "sign", &key])
            .args(["--algorithm", "ecdsa-sha-256", "--in"])
            .arg(&msg)
            .arg("--out")
            .arg(d.scratch().join("sig"))
            .env_remove("HSMCTL_PROFILE");
        let hsmctl = std::thread::spawn(move || hsmd_e2e::run_unchecked(&mut cmd));
        // Own throttled records are counted from `before` on; the log may lag them,
        // never lead them, so a surplus is somebody else's.
        while !hsmctl.is_finished() && throttled_in_log() < before + own_throttled {
            if drain_once().await {
                own_throttled += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let out = hsmctl.join().expect("hsmctl thread");
        assert!(out.success(), "{}", out.describe());
        if out
            .stderr
            .contains("retry 1 of Sign after RESOURCE_EXHAUSTED RATE_LIMITED")
        {
            retried = true;
            break;
        }
    }
    assert!(retried, "hsmctl -v shows its retries");
}

#[tokio::test]
async fn create_key_with_a_lost_answer_retried_makes_one_key() {
    let d = Daemon::start().await;
    let endpoint = d
        .profile()
        .endpoint
        .trim_start_matches("https://")
        .to_string();
    let proxy = Proxy::start(endpoint.parse().unwrap(), Duration::from_millis(1500)).await;
    let mut profile = Profile::load(d.profile_path()).expect("profile");
    profile.endpoint = format!("https://{}", proxy.addr);
    let c = Client::connect(&profile).await.expect("connect via proxy");
    c.generate_random(8).await.expect("warm the connection");
    let before = d
        .keys()
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys
        .len();

    proxy.lose_next_answer();
    let req = CreateKeyRequest {
        spec: KeySpec::EcP256 as i32,
        usage: KeyUsage::SignVerify as i32,
        alias: "once".into(),
        ..Default::default()
    };
    let key = c
        .create_key(req.clone())
        .await
        .expect("CreateKey with retries");
    assert!(proxy.lost(), "the first answer was lost");
    assert!(c.retries() >= 1, "the client retried");
    let keys = d
        .keys()
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), before + 1, "exactly one key was made");
    assert_eq!(keys.iter().filter(|k| k.key_id == key.key_id).count(), 1);
    let creates: Vec<_> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l.str("method") == "/hsmd.v1.KeyService/CreateKey" && l.str("outcome") == "ok")
        .collect();
    assert_eq!(creates.len(), 2, "both tries are audited");
    assert!(creates.iter().all(|l| l.str("key_id") == key.key_id));

    // The same token with other parameters is refused.
    let mut other = req;
    other.alias = String::new();
    other.idempotency_token = "fixed-token".into();
    let k1 = c.create_key(other.clone()).await.expect("first");
    let k2 = c.create_key(other.clone()).await.expect("same token again");
    assert_eq!(k1.key_id, k2.key_id);
    other.description = "different".into();
    let err = c
        .create_key(other)
        .await
        .expect_err("same token, other parameters");
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(
        err.reason().map(|r| r.as_str()),
        Some("IDEMPOTENCY_MISMATCH")
    );
}

#[tokio::test]
async fn a_call_the_client_abandons_still_gets_its_audit_record() {
    let d = Daemon::start().await;
    let mut req = tonic::Request::new(CreateKeyRequest {
        spec: KeySpec::Rsa4096 as i32,
        usage: KeyUsage::SignVerify as i32,
        alias: "abandoned".into(),
        ..Default::default()
    });
    // RSA-4096 generation takes far longer than this: the client gives up mid-call.
    req.set_timeout(Duration::from_millis(20));
    let r = d.keys().create_key(req).await;
    assert!(r.is_err(), "the client was expected to give up first");
    // The server finishes the call: the key exists, and so does its record.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let rec = loop {
        let found = d.audit_lines().into_iter().find(|l| {
            l.str("method") == "/hsmd.v1.KeyService/CreateKey"
                && l.str("alias") == "alias/abandoned"
        });
        if let Some(rec) = found {
            break rec;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record of the abandoned CreateKey"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec.str("outcome"), "ok", "{}", rec.raw);
    let key = d
        .keys()
        .describe_key(hsmd_e2e::v1::DescribeKeyRequest {
            key_id: "alias/abandoned".into(),
        })
        .await
        .expect("the key was made")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(key.key_id, rec.str("key_id"));
}
