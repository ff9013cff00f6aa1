//! Audit storage full: the audit log's file cannot grow (a file-size limit put on the
//! running hsmd with prlimit(1), which needs no mount or privilege). Every audited call
//! is refused UNAVAILABLE / AUDIT_UNAVAILABLE and none is answered OK without its
//! record; the file keeps its last whole record; health says NOT_SERVING. Once the
//! limit is lifted the next call succeeds without a restart, an
//! `hsmd/AuditStorageRecovered` record counts the refused calls, health says SERVING
//! and the chain verifies across the gap.

use std::{fs, process::Command, time::Duration};

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    expect_error, expect_ok,
    tools::run,
    v1::{KeySpec, MessageType, SigningAlgorithm},
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const REFUSED: usize = 3;

fn prlimit_fsize(d: &Daemon, limit: &str) {
    // Soft limit only: the hard one stays unlimited, so lifting it needs no privilege.
    run(Command::new("prlimit")
        .arg("--pid")
        .arg(d.pid().to_string())
        .arg(format!("--fsize={limit}:unlimited")));
}

/// Waits until gRPC health for the KeyService says `want`.
async fn wait_for_health(d: &Daemon, want: ServingStatus) {
    let mut health = HealthClient::new(d.channel());
    let mut last = None;
    for _ in 0..100 {
        let status = health
            .check(HealthCheckRequest {
                service: "hsmd.v1.KeyService".into(),
            })
            .await
            .expect("grpc.health.v1 Check")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health stayed {last:?}, expected {want:?}");
}

#[tokio::test]
async fn full_audit_storage_refuses_calls_then_recovers_without_restart() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    let key = create_key(&mut keys, KeySpec::EcP256, "").await;
    let alg = SigningAlgorithm::EcdsaSha256;
    expect_ok(
        sign(&mut keys, &key, alg, MessageType::Raw, b"before").await,
        "Sign before",
    );
    wait_for_health(&d, ServingStatus::Serving).await;

    let path = d.audit_log_path();
    let size = fs::metadata(&path).expect("audit log").len();
    prlimit_fsize(&d, &size.to_string());
    let mut refused = Vec::new();
    for i in 0..REFUSED {
        let msg = format!("while full {i}");
        let r = sign(&mut keys, &key, alg, MessageType::Raw, msg.as_bytes()).await;
        refused.push(expect_error(
            r,
            Code::Unavailable,
            "AUDIT_UNAVAILABLE",
            "Sign while the audit log cannot grow",
        ));
    }
    wait_for_health(&d, ServingStatus::NotServing).await;
    assert_eq!(
        fs::metadata(&path).expect("audit log").len(),
        size,
        "a failed write left bytes behind instead of cutting the file back"
    );
    // (hsmd's log lines are lost meanwhile: its stderr is a file under the same limit.
    // That must not hurt it: a log write that fails is dropped, never a panic.)

    prlimit_fsize(&d, "unlimited");
    let (_, after) = expect_ok(
        sign(&mut keys, &key, alg, MessageType::Raw, b"after").await,
        "Sign once the limit is lifted",
    );
    wait_for_health(&d, ServingStatus::Serving).await;

    let lines = d.audit_lines();
    for id in &refused {
        assert!(
            lines.iter().all(|l| l.str("request_id") != id.as_str()),
            "a refused call {id} has a record"
        );
    }
    let outage: Vec<_> = lines
        .iter()
        .filter(|l| l.str("method") == "hsmd/AuditStorageRecovered")
        .collect();
    assert_eq!(outage.len(), 1, "one outage record: {outage:?}");
    let note = outage[0].str("note");
    assert!(
        note.contains(&format!("{REFUSED} call(s) refused")),
        "the outage record does not count the refused calls: {note}"
    );
    assert_eq!(outage[0].str("reason"), "AUDIT_STORAGE_RECOVERED");
    let after_seq = d.audit_record(&after).json["seq"].as_u64().expect("seq");
    assert_eq!(
        outage[0].json["seq"].as_u64(),
        Some(after_seq - 1),
        "the outage record comes right before the first call answered after it"
    );
    let out = d.hsmctl(["audit", "verify"]);
    assert!(
        out.success() && out.stdout.trim_start().starts_with("ok"),
        "the chain does not verify across the outage\n{}",
        out.describe()
    );
}
