//! A push that cannot be signed (its registry is unreachable) is retried, without an
//! audit record, for 24 hours after it arrived; then it is given up with one failed
//! record and never tried again.
//!
//! Nobody waits a day: the daemon runs in this process on a manual clock ([`InProcess`]),
//! and the webhook, the retry queue and the give-up all read that clock. An in-process
//! daemon is alone in its test binary: this file holds one test.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    InProcess,
    algorithms::create_key,
    audit::{AuditLine, check_chain},
    status::describe,
    tools::write_file,
    v1::{
        CreateSignaturePolicyRequest, KeySpec,
        signing_policy_service_client::SigningPolicyServiceClient,
    },
};

const SECRET: &str = "webhook-secret-for-the-give-up-test";
/// The audit method of an image signed (or given up) on a registry push.
const PUSH_METHOD: &str = "hsmd/SignImageOnPush";
const WAIT: Duration = Duration::from_secs(60);

fn push_records(d: &InProcess) -> Vec<AuditLine> {
    d.audit_lines_if_any()
        .into_iter()
        .filter(|l| l.str("method") == PUSH_METHOD)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_retried_for_a_day_then_given_up_with_one_failed_record() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "webhook.secret", SECRET.as_bytes());
    // A registry that refuses every connection: a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = InProcess::start_with_registry(hsmd::dev::DevRegistry {
        url: format!("http://{closed}"),
        webhook_listen: "127.0.0.1:0".into(),
        webhook_secret_file: Some(secret),
    })
    .await;

    let key = create_key(&mut d.keys(), KeySpec::EcP256, "alias/give-up-signer").await;
    SigningPolicyServiceClient::new(d.channel())
        .create_signature_policy(CreateSignaturePolicyRequest {
            namespace: "team".into(),
            name: "team-policy".into(),
            key_id: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("CreateSignaturePolicy: {}", describe(&s)));

    let digest = format!("sha256:{}", "ab".repeat(32));
    let envelope = serde_json::json!({"events": [{
        "id": "evt-give-up",
        "timestamp": "2026-12-06T00:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 400,
            "repository": "team/app",
            "tag": "v1",
        },
        "request": {"method": "PUT"},
    }]});
    let resp = reqwest::Client::new()
        .post(d.webhook_url())
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .header("Authorization", format!("Bearer {SECRET}"))
        .body(envelope.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the webhook queues the push");

    // The first attempts fail on the unreachable registry: retried, not recorded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        push_records(&d).is_empty(),
        "a push still being retried has no record yet: {:?}",
        push_records(&d)
            .iter()
            .map(AuditLine::body)
            .collect::<Vec<_>>()
    );

    // A day and an hour later, by the daemon's clock, the next attempt gives it up.
    d.clock().advance(25 * 3600);
    let deadline = Instant::now() + WAIT;
    let given_up = loop {
        let records = push_records(&d);
        if !records.is_empty() {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "no {PUSH_METHOD} record within {WAIT:?} of moving the clock a day on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let record = &given_up[0];
    assert_eq!(record.str("status"), "UNAVAILABLE", "{}", record.body());
    assert_eq!(record.str("principal"), "hsmd", "{}", record.body());
    assert_eq!(record.str("key_id"), key, "{}", record.body());
    assert!(
        record.body().contains("team/app") && record.body().contains("team-policy"),
        "the record names the image and the policy: {}",
        record.body()
    );

    // Given up means never tried again: no second record after several retry periods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    d.clock().advance(3600);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(push_records(&d).len(), 1, "one record for a push given up");
    check_chain(&d.audit_lines()).expect("the audit chain holds");
}
