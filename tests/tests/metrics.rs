//! The Prometheus metrics listener of `hsmd dev --metrics-listen`: Prometheus' own
//! `promtool check metrics` accepts `/metrics`, the counters move after calls, no label
//! carries a key id, an alias, message bytes or the principal (`per_principal` is off by
//! default), and `/healthz` mirrors gRPC health. One daemon for the whole binary: the
//! checks run in order in one test.

use std::collections::BTreeMap;

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    ops::{http_get, http_request, promtool_check, require_ops_tools},
};

/// Every sample of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    let check = promtool_check(&body);
    assert!(
        check.success(),
        "promtool check metrics refused /metrics\n{}\n---- /metrics:\n{body}",
        check.describe()
    );
    body
}

#[tokio::test]
async fn metrics_are_valid_move_with_calls_and_carry_no_secrets() {
    require_ops_tools();
    let d = Daemon::start_with(["--metrics-listen", "127.0.0.1:0"]).await;
    let endpoint = d
        .profile()
        .metrics_endpoint
        .clone()
        .expect("client.toml names metrics_endpoint");
    assert!(
        d.stdout_text()
            .contains(&format!("metrics on {endpoint}/metrics")),
        "the start-up line names the metrics address: {}",
        d.stdout_text()
    );
    let addr = endpoint.strip_prefix("http://").expect("http:// endpoint");

    let (status, body) = http_get(addr, "/healthz");
    assert_eq!((status, body.trim()), (200, "SERVING"), "/healthz");
    let (status, _) = http_get(addr, "/nope");
    assert_eq!(status, 404);

    let before = samples(&scrape(addr));
    let key = d.hsmctl_ok([
        "key",
        "create",
        "--spec",
        "EC_P256",
        "--usage",
        "sign-verify",
        "--alias",
        "metrics-secret-alias",
    ]);
    let message = "message-bytes-that-must-not-leak";
    std::fs::write(d.scratch().join("msg.txt"), message).expect("write message");
    for _ in 0..3 {
        d.hsmctl_ok([
            "sign",
            &key,
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            "msg.txt",
            "--out",
            "msg.sig",
        ]);
    }
    let refused = d.hsmctl(["key", "describe", "alias/metrics-missing-alias"]);
    assert!(!refused.success(), "describe of a missing alias must fail");

    let text = scrape(addr);
    let after = samples(&text);
    let sign_ok = "hsmd_calls_total{method=\"/hsmd.v1.KeyService/Sign\",outcome=\"ok\"}";
    assert_eq!(
        value(&after, sign_ok) - value(&before, sign_ok),
        3.0,
        "three Sign calls counted\n{text}"
    );
    let describe_invalid =
        "hsmd_calls_total{method=\"/hsmd.v1.KeyService/DescribeKey\",outcome=\"invalid\"}";
    assert_eq!(value(&after, describe_invalid), 1.0, "{text}");
    let sign_latency = "hsmd_call_duration_seconds_count{method=\"/hsmd.v1.KeyService/Sign\"}";
    assert_eq!(
        value(&after, sign_latency) - value(&before, sign_latency),
        3.0
    );
    let token_sign =
        "hsmd_token_operation_duration_seconds_count{operation=\"C_Sign\",mechanism=\"CKM_ECDSA\"}";
    assert!(value(&after, token_sign) >= 3.0, "{text}");
    let records = "hsmd_audit_records_written_total";
    assert!(
        value(&after, records) - value(&before, records) >= 5.0,
        "five calls, five audit records at least\n{text}"
    );
    assert!(value(&after, "hsmd_audit_fsync_duration_seconds_count") >= 1.0);
    assert!(
        value(&after, "hsmd_keys{state=\"ENABLED\"}") >= 1.0,
        "{text}"
    );
    assert!(value(&after, "hsmd_token_sessions") >= 1.0, "{text}");
    assert_eq!(value(&after, "hsmd_token_sessions_in_use"), 0.0);
    assert_eq!(value(&after, "hsmd_audit_queue_depth"), 0.0);

    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(message.as_bytes()))
    };
    for secret in [
        key.as_str(),
        "metrics-secret-alias",
        "metrics-missing-alias",
        message,
        &digest,
        ADMIN_PRINCIPAL,
    ] {
        assert!(
            !text.contains(secret),
            "/metrics must not carry {secret}\n{text}"
        );
    }
    assert!(
        !text.contains("principal="),
        "no principal label unless [metrics] per_principal = true"
    );

    // OpenMetrics for scrapers that ask for it (Prometheus does).
    let open = http_request(
        addr,
        "/metrics",
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    )
    .expect("GET /metrics as OpenMetrics");
    assert_eq!(open.status, 200, "{open:?}");
    assert!(
        open.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{open:?}"
    );
    assert!(open.body.trim_end().ends_with("# EOF"), "{open:?}");
}
