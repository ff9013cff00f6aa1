//! Per-key authorization: three client certificates (a payments app, an admin team, a
//! security team) against one policy. Each can do exactly its grants; every other call
//! is PERMISSION_DENIED / ACCESS_DENIED and audited as denied. SIGHUP with a changed
//! policy takes effect; SIGHUP with a broken one keeps the old one.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    algorithms::sign,
    expect_error, expect_ok,
    status::key_method,
    v1::{
        CreateKeyRequest, DescribeKeyRequest, GetAuditPublicKeyRequest, KeySpec, KeyUsage,
        ListKeysRequest, MessageType, QueryAuditRequest, SigningAlgorithm,
        audit_service_client::AuditServiceClient, key_service_client::KeyServiceClient,
    },
};
use tonic::{Code, transport::Channel};

const APP: &str = "spiffe://hsmd.dev/payments/api";
const AUDITOR: &str = "spiffe://hsmd.dev/security";

fn policy(app_keys: &str, app_actions: &str) -> String {
    format!(
        r#"
[[policy.rules]]
principals = ["spiffe://hsmd.dev/payments/*"]
actions = [{app_actions}]
keys = [{app_keys}]

[[policy.rules]]
principals = ["{ADMIN_PRINCIPAL}"]
actions = ["manage"]
keys = ["*"]

[[policy.rules]]
principals = ["{AUDITOR}"]
actions = ["audit"]
"#
    )
}

const APP_KEYS: &str = r#""alias/payments-*", "tag:team=payments""#;
const APP_ACTIONS: &str = r#""use", "ListKeys", "DescribeKey""#;

async fn create(keys: &mut KeyServiceClient<Channel>, alias: &str, team: &str) -> String {
    let req = CreateKeyRequest {
        spec: KeySpec::EcP256 as i32,
        usage: KeyUsage::SignVerify as i32,
        alias: alias.into(),
        tags: [("team".to_string(), team.to_string())].into(),
        ..Default::default()
    };
    let (resp, _) = expect_ok(keys.create_key(req).await, "CreateKey as admin");
    let key = resp.key.expect("key");
    assert_eq!(
        key.tags.get("created-by").map(String::as_str),
        Some(ADMIN_PRINCIPAL),
        "created-by tag: {key:?}"
    );
    key.key_id
}

async fn channel_as(d: &Daemon, name: &str, principal: &str) -> Channel {
    let cert = d.issue_from_dev_ca(name, Some(principal));
    d.connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .expect("TLS accepts a dev CA certificate")
}

fn ec(
    keys: &mut KeyServiceClient<Channel>,
    key: &str,
) -> impl std::future::Future<Output = Result<tonic::Response<hsmd_e2e::v1::SignResponse>, tonic::Status>>
{
    let mut k = keys.clone();
    let key = key.to_string();
    async move {
        sign(
            &mut k,
            &key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"m",
        )
        .await
    }
}

#[tokio::test]
async fn each_principal_does_exactly_its_grants_and_sighup_reloads() {
    let (d, config) = Daemon::start_configured(&policy(APP_KEYS, APP_ACTIONS)).await;
    let mut admin = d.keys();
    let pay = create(&mut admin, "payments-signer", "payments").await;
    let tagged = create(&mut admin, "", "payments").await;
    let hr = create(&mut admin, "hr-signer", "hr").await;

    // The admin manages but cannot use.
    let rec = d.assert_refused(
        ec(&mut admin, &pay).await,
        &key_method("Sign"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    assert_eq!(rec.str("principal"), ADMIN_PRINCIPAL);
    assert_eq!(rec.str("outcome"), "denied");
    expect_ok(
        admin
            .describe_key(DescribeKeyRequest { key_id: hr.clone() })
            .await,
        "admin DescribeKey",
    );
    let r = AuditServiceClient::new(d.channel())
        .query_audit(QueryAuditRequest::default())
        .await
        .map(|_| ());
    d.assert_refused(
        r.map(tonic::Response::new),
        "/hsmd.v1.AuditService/QueryAudit",
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );

    // The app uses its keys (by alias glob and by tag), and nothing else.
    let mut app = KeyServiceClient::new(channel_as(&d, "app", APP).await);
    expect_ok(
        ec(&mut app, "alias/payments-signer").await,
        "app signs by alias",
    );
    expect_ok(ec(&mut app, &tagged).await, "app signs a tagged key");
    let status = ec(&mut app, &hr)
        .await
        .expect_err("app may not sign the hr key");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("Sign") && status.message().contains(&hr),
        "the refusal names the action and the key: {}",
        status.message()
    );
    let rid = expect_error(
        ec(&mut app, "alias/does-not-exist").await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "a missing key looks like a forbidden one",
    );
    d.assert_audited(
        &rid,
        &key_method("Sign"),
        "denied",
        "PERMISSION_DENIED",
        "ACCESS_DENIED",
    );
    let req = CreateKeyRequest {
        spec: KeySpec::EcP256 as i32,
        usage: KeyUsage::SignVerify as i32,
        ..Default::default()
    };
    d.assert_refused(
        app.create_key(req).await,
        &key_method("CreateKey"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    let (list, _) = expect_ok(
        app.list_keys(ListKeysRequest::default()).await,
        "app ListKeys",
    );
    let mut seen: Vec<String> = list.keys.into_iter().map(|k| k.key_id).collect();
    seen.sort();
    let mut mine = vec![pay.clone(), tagged.clone()];
    mine.sort();
    assert_eq!(seen, mine, "ListKeys shows only the keys the app may use");

    // The security team reads the audit log and touches no key.
    let auditor = channel_as(&d, "auditor", AUDITOR).await;
    let mut audit = AuditServiceClient::new(auditor.clone());
    let mut stream = expect_ok(
        audit.query_audit(QueryAuditRequest::default()).await,
        "auditor QueryAudit",
    )
    .0;
    let mut denied = 0;
    while let Some(r) = stream.message().await.expect("stream") {
        if r.outcome == hsmd_e2e::v1::AuditOutcome::Denied as i32 {
            denied += 1;
        }
    }
    assert!(denied >= 4, "the refusals are in the log ({denied})");
    expect_ok(
        audit
            .get_audit_public_key(GetAuditPublicKeyRequest {})
            .await,
        "auditor GetAuditPublicKey",
    );
    let mut auditor_keys = KeyServiceClient::new(auditor);
    d.assert_refused(
        ec(&mut auditor_keys, &pay).await,
        &key_method("Sign"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    d.assert_refused(
        auditor_keys
            .describe_key(DescribeKeyRequest {
                key_id: pay.clone(),
            })
            .await,
        &key_method("DescribeKey"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );

    // SIGHUP with a policy that also gives the app the hr key: takes effect.
    let wider = format!(r#"{APP_KEYS}, "tag:team=hr""#);
    std::fs::write(&config, d.configured_text(&policy(&wider, APP_ACTIONS))).unwrap();
    d.sighup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ec(&mut app, &hr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the reloaded policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGHUP with a broken policy: refused, the previous one stays.
    std::fs::write(
        &config,
        d.configured_text(&policy(&wider, r#""Frobnicate""#)),
    )
    .unwrap();
    d.sighup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.stderr_text().contains("config reload refused") {
        assert!(
            Instant::now() < deadline,
            "no log line about the refused reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.stderr_text().contains("Frobnicate"), "the log says why");
    expect_ok(ec(&mut app, &hr).await, "old policy still in force");
    expect_ok(ec(&mut app, &pay).await, "old policy still in force");
}

#[tokio::test]
async fn missing_keys_are_not_found_for_principals_with_every_key() {
    let (d, _) = Daemon::start_configured(&policy(APP_KEYS, APP_ACTIONS)).await;
    // The admin may manage every key, so it may learn that a key does not exist.
    expect_error(
        d.keys()
            .describe_key(DescribeKeyRequest {
                key_id: "alias/nothing-here".into(),
            })
            .await,
        Code::NotFound,
        "ALIAS_NOT_FOUND",
        "admin describes a missing alias",
    );
}
