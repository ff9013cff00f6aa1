//! The audit log: exactly one record per call (refused ones included, health checks and
//! reflection excluded), a hash chain an outsider can check, no inputs in the clear, and
//! `hsmctl audit verify` / VerifyAuditLog naming the record after an edit, a deletion or
//! a swap of records in the file.

use base64::Engine as _;
use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    audit::{AuditLine, REQUIRED_FIELDS, check_chain},
    certs::{issue_client_cert, make_ca},
    expect_ok,
    status::{expect_error, key_method},
    v1::{
        CreateKeyRequest, DescribeKeyRequest, GenerateRandomRequest, KeySpec, KeyUsage,
        MessageType, QueryAuditRequest, SigningAlgorithm, VerifyAuditLogRequest,
        key_service_client::KeyServiceClient,
    },
};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const MARKER: &[u8] = b"TOP-SECRET-PAYLOAD-7f3a9c1e-do-not-log-me";

/// Calls that must not be audited: a health check and a reflection listing. Also checks
/// that both services are on.
async fn unaudited_calls(d: &Daemon) {
    let health = HealthClient::new(d.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    assert_eq!(health.status, 1, "health status is not SERVING");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(d.channel())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("server reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in [
        "hsmd.v1.KeyService",
        "hsmd.v1.AuditService",
        "hsmd.v1.TokenService",
    ] {
        assert!(
            names.iter().any(|n| n == svc),
            "reflection does not list {svc}: {names:?}"
        );
    }
}

#[tokio::test]
async fn audit_log_has_exactly_one_record_per_call() {
    let d = Daemon::start().await;
    let mut keys = d.keys();
    // (request id, method, outcome) of every audited call, in order.
    let mut calls: Vec<(String, String, &str)> = Vec::new();

    let (_, rid) = expect_ok(
        keys.generate_random(GenerateRandomRequest { length: 16 })
            .await,
        "GenerateRandom",
    );
    calls.push((rid, key_method("GenerateRandom"), "ok"));
    let req = CreateKeyRequest {
        spec: KeySpec::EcP256 as i32,
        usage: KeyUsage::SignVerify as i32,
        ..Default::default()
    };
    let (created, rid) = expect_ok(keys.create_key(req).await, "CreateKey");
    let key = created.key.expect("key").key_id;
    calls.push((rid, key_method("CreateKey"), "ok"));
    let alg = SigningAlgorithm::EcdsaSha256;
    let signed = hsmd_e2e::algorithms::sign(&mut keys, &key, alg, MessageType::Raw, MARKER).await;
    let (signed, rid) = expect_ok(signed, "Sign");
    let sign_rid = rid.clone();
    calls.push((rid, key_method("Sign"), "ok"));
    let verified = hsmd_e2e::algorithms::verify(
        &mut keys,
        &key,
        alg,
        MessageType::Raw,
        MARKER,
        &signed.signature,
    )
    .await;
    let (_, rid) = expect_ok(verified, "Verify");
    calls.push((rid, key_method("Verify"), "ok"));
    let unknown = "5d0a8f5e-3c1b-4b7e-9a51-0c2f1e6d7a99";
    let r = hsmd_e2e::algorithms::sign(&mut keys, unknown, alg, MessageType::Raw, b"x").await;
    let rid = expect_error(r, Code::NotFound, "KEY_NOT_FOUND", "Sign unknown key");
    calls.push((rid, key_method("Sign"), "invalid"));
    let r = keys
        .describe_key(DescribeKeyRequest {
            key_id: "nope".into(),
        })
        .await;
    let rid = expect_error(
        r,
        Code::InvalidArgument,
        "INVALID_KEY_ID",
        "DescribeKey malformed",
    );
    calls.push((rid, key_method("DescribeKey"), "invalid"));

    // A refused principal is audited; a rogue CA never gets that far.
    let intruder = d.issue_from_dev_ca("intruder", Some("spiffe://hsmd.dev/intruder"));
    let channel = d
        .connect_as(&intruder.cert_pem, &intruder.key_pem)
        .await
        .expect("connect");
    let r = KeyServiceClient::new(channel)
        .generate_random(GenerateRandomRequest { length: 8 })
        .await;
    let rid = expect_error(r, Code::PermissionDenied, "ACCESS_DENIED", "intruder");
    calls.push((rid, key_method("GenerateRandom"), "denied"));
    let rogue_ca = make_ca(&d.scratch(), "rogue");
    let rogue = issue_client_cert(
        &d.scratch(),
        "rogue",
        &rogue_ca.cert_path,
        &rogue_ca.key_path,
        Some("spiffe://rogue.example/x"),
    );
    if let Ok(channel) = d.connect_as(&rogue.cert_pem, &rogue.key_pem).await {
        let r = KeyServiceClient::new(channel)
            .generate_random(GenerateRandomRequest { length: 8 })
            .await;
        assert!(r.is_err(), "a certificate from another CA was served");
    }
    unaudited_calls(&d).await;

    // QueryAudit is audited itself; it returns the file's lines verbatim.
    let query = QueryAuditRequest {
        method: "Sign".into(),
        ..Default::default()
    };
    let resp = d.audit().query_audit(query).await.expect("QueryAudit");
    let rid = hsmd_e2e::request_id(resp.metadata(), "QueryAudit");
    let mut stream = resp.into_inner();
    let mut found = Vec::new();
    while let Some(rec) = stream.message().await.expect("QueryAudit stream") {
        found.push(rec);
    }
    calls.push((rid, "/hsmd.v1.AuditService/QueryAudit".into(), "ok"));

    let lines = d.audit_lines();
    assert_eq!(
        lines.len(),
        calls.len(),
        "the test made {} audited calls; the log has {} records:\n{}",
        calls.len(),
        lines.len(),
        lines
            .iter()
            .map(|l| l.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (line, (rid, method, outcome)) in lines.iter().zip(&calls) {
        assert_eq!(
            line.str("request_id"),
            rid,
            "records are in call order: {}",
            line.raw
        );
        assert_eq!(line.str("method"), method, "{}", line.raw);
        assert_eq!(line.str("outcome"), *outcome, "{}", line.raw);
        let principal = if *outcome == "denied" {
            "spiffe://hsmd.dev/intruder"
        } else {
            ADMIN_PRINCIPAL
        };
        assert_eq!(line.str("principal"), principal, "{}", line.raw);
        assert!(
            line.str("peer").starts_with("127.0.0.1:"),
            "peer: {}",
            line.raw
        );
        for field in REQUIRED_FIELDS {
            assert!(
                line.json.get(field).is_some(),
                "record lacks `{field}`: {}",
                line.raw
            );
        }
    }
    check_chain(&lines).unwrap_or_else(|e| panic!("hash chain broken: {e}"));
    check_sign_record(&d, &sign_rid, &key);
    check_query_result(&found, &lines);
    check_no_secrets(&d);
    verify_ok(&d, lines.len()).await;
}

fn check_sign_record(d: &Daemon, rid: &str, key: &str) {
    let rec = d.audit_record(rid);
    assert_eq!(
        rec.str("input_sha256"),
        hex::encode(Sha256::digest(MARKER)),
        "{}",
        rec.raw
    );
    assert_eq!(rec.str("key_id"), key, "{}", rec.raw);
    assert_eq!(rec.str("algorithm"), "ECDSA_SHA_256", "{}", rec.raw);
    assert_eq!(rec.str("message_type"), "RAW", "{}", rec.raw);
    assert_eq!(rec.str("status"), "OK", "{}", rec.raw);
}

fn check_query_result(found: &[hsmd_e2e::v1::AuditRecord], lines: &[AuditLine]) {
    let want: Vec<&str> = lines
        .iter()
        .filter(|l| l.str("method") == key_method("Sign"))
        .map(|l| l.raw.as_str())
        .collect();
    let got: Vec<&str> = found.iter().map(|r| r.json.as_str()).collect();
    assert_eq!(
        got, want,
        "QueryAudit(method=Sign) must return exactly the Sign lines, verbatim"
    );
}

fn check_no_secrets(d: &Daemon) {
    let text = d.audit_text();
    let b64 = base64::engine::general_purpose::STANDARD.encode(MARKER);
    for needle in [
        String::from_utf8_lossy(MARKER).into_owned(),
        hex::encode(MARKER),
        b64,
    ] {
        assert!(
            !text.contains(&needle),
            "the audit log holds the signed input ({needle})"
        );
    }
    let pin = d.pin();
    assert!(
        pin.len() >= 4 && !text.contains(&pin),
        "the audit log holds the PIN"
    );
}

/// `hsmctl audit verify` and VerifyAuditLog both accept the chain.
async fn verify_ok(d: &Daemon, records_before: usize) {
    let out = d.hsmctl(["audit", "verify"]);
    assert!(
        out.success() && out.stdout.trim_start().starts_with("ok"),
        "hsmctl audit verify\n{}",
        out.describe()
    );
    let (resp, _) = expect_ok(
        d.audit().verify_audit_log(VerifyAuditLogRequest {}).await,
        "VerifyAuditLog",
    );
    assert!(resp.ok, "VerifyAuditLog: {resp:?}");
    let lines = d.audit_lines();
    let checked = resp.records_checked as usize;
    assert!(
        checked > records_before && checked <= lines.len(),
        "records_checked {checked}, but the log had {records_before} records before hsmctl and has {} now",
        lines.len()
    );
    assert_eq!(
        resp.head_hash,
        lines[checked - 1].hash(),
        "head_hash is the hash of the last checked line"
    );
}

/// Makes `n` audited calls so there is a chain to tamper with.
async fn fill_log(d: &Daemon, n: usize) -> Vec<AuditLine> {
    let mut keys = d.keys();
    for _ in 0..n {
        expect_ok(
            keys.generate_random(GenerateRandomRequest { length: 8 })
                .await,
            "GenerateRandom",
        );
    }
    let lines = d.audit_lines();
    assert_eq!(lines.len(), n, "one record per call");
    lines
}

/// Rewrites the log in place (same inode, so the daemon keeps appending to it).
fn rewrite(d: &Daemon, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(d.audit_log_path(), text).expect("rewrite audit log");
}

/// Both verifiers must fail and name one of the sequence numbers in `culprits`.
async fn assert_broken(d: &Daemon, culprits: &[u64], what: &str) {
    let out = d.hsmctl(["audit", "verify"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.code,
        Some(1),
        "{what}: hsmctl audit verify must exit 1\n{}",
        out.describe()
    );
    assert!(
        culprits
            .iter()
            .any(|seq| text.contains(&format!("BROKEN at record {seq} "))),
        "{what}: hsmctl must name record {culprits:?}\n{}",
        out.describe()
    );
    let (resp, _) = expect_ok(
        d.audit().verify_audit_log(VerifyAuditLogRequest {}).await,
        "VerifyAuditLog",
    );
    assert!(!resp.ok, "{what}: VerifyAuditLog says ok: {resp:?}");
    assert!(
        culprits.contains(&resp.first_bad_sequence),
        "{what}: VerifyAuditLog names {resp:?}, expected one of {culprits:?}"
    );
    assert!(!resp.problem.is_empty(), "{what}: no problem described");
}

fn raw_lines(lines: &[AuditLine]) -> Vec<String> {
    lines.iter().map(|l| l.raw.clone()).collect()
}

#[tokio::test]
async fn editing_one_byte_of_a_record_is_detected() {
    let d = Daemon::start().await;
    let lines = fill_log(&d, 8).await;
    let mut raw = raw_lines(&lines);
    let i = 3;
    // Change one digit of duration_us: still valid JSON, different bytes.
    let at = raw[i]
        .find("\"duration_us\"")
        .expect("duration_us in record");
    let pos = raw[i][at..]
        .find(|c: char| c.is_ascii_digit())
        .expect("a digit")
        + at;
    let old = raw[i].as_bytes()[pos];
    let new = if old == b'9' { b'8' } else { old + 1 };
    raw[i].replace_range(pos..=pos, &(new as char).to_string());
    rewrite(&d, &raw);
    // The edited record, or the next one whose prev_hash no longer matches.
    assert_broken(&d, &[lines[i].seq(), lines[i + 1].seq()], "edited byte").await;
}

#[tokio::test]
async fn deleting_a_record_is_detected() {
    let d = Daemon::start().await;
    let lines = fill_log(&d, 8).await;
    let mut raw = raw_lines(&lines);
    let i = 4;
    raw.remove(i);
    rewrite(&d, &raw);
    // The missing record, or the one after the gap.
    assert_broken(&d, &[lines[i].seq(), lines[i + 1].seq()], "deleted record").await;
}

#[tokio::test]
async fn swapping_two_records_is_detected() {
    let d = Daemon::start().await;
    let lines = fill_log(&d, 8).await;
    let mut raw = raw_lines(&lines);
    let i = 2;
    raw.swap(i, i + 1);
    rewrite(&d, &raw);
    assert_broken(&d, &[lines[i].seq(), lines[i + 1].seq()], "swapped records").await;
}
