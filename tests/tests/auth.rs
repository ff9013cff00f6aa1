//! Transport identity: TLS refuses certificates from another CA and connections
//! without one; a certificate from the right CA whose principal is not allowed gets
//! PERMISSION_DENIED, and the refusal is audited with that principal.

use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    certs::{issue_client_cert, make_ca},
    expect_ok, reason_of,
    status::{describe, key_method},
    v1::{
        DescribeKeyRequest, GenerateRandomRequest, KeySpec, MessageType, QueryAuditRequest,
        SigningAlgorithm, audit_service_client::AuditServiceClient,
        key_service_client::KeyServiceClient,
    },
};
use tonic::{Code, transport::Channel};

/// One call over `channel`, or the connection error; Ok(()) only if the call succeeded.
async fn try_call(channel: Result<Channel, tonic::transport::Error>) -> Result<(), String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    let r = KeyServiceClient::new(channel)
        .generate_random(GenerateRandomRequest { length: 8 })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(status) => {
            // The refusal must come from TLS, not from hsmd's application layer.
            assert!(
                reason_of(&status).is_none() && status.metadata().get("x-request-id").is_none(),
                "the server answered at the gRPC level, so TLS accepted the certificate: {}",
                describe(&status)
            );
            assert_ne!(
                status.code(),
                Code::PermissionDenied,
                "{}",
                describe(&status)
            );
            Err(describe(&status))
        }
    }
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let d = Daemon::start().await;
    expect_ok(
        d.keys()
            .generate_random(GenerateRandomRequest { length: 8 })
            .await,
        "GenerateRandom as admin",
    );
    let baseline = d.audit_lines().len();
    let dir = d.scratch();
    let rogue_ca = make_ca(&dir, "rogue");
    // Same principal as the allowed admin: only the CA check can stop it.
    let impostor = issue_client_cert(
        &dir,
        "impostor",
        &rogue_ca.cert_path,
        &rogue_ca.key_path,
        Some(ADMIN_PRINCIPAL),
    );
    let stranger = issue_client_cert(
        &dir,
        "stranger",
        &rogue_ca.cert_path,
        &rogue_ca.key_path,
        Some("spiffe://rogue.example/stranger"),
    );
    for cert in [&impostor, &stranger] {
        let r = try_call(d.connect_as(&cert.cert_pem, &cert.key_pem).await).await;
        assert!(
            r.is_err(),
            "{}: a certificate from another CA was accepted",
            cert.cert_path.display()
        );
    }
    let lines = d.audit_lines();
    for rec in &lines {
        assert_ne!(
            rec.str("principal"),
            "spiffe://rogue.example/stranger",
            "rogue principal audited: {}",
            rec.raw
        );
    }
    for rec in &lines[baseline..] {
        assert_ne!(
            rec.str("outcome"),
            "ok",
            "a call succeeded after the rogue attempts: {}",
            rec.raw
        );
    }
}

#[tokio::test]
async fn connection_without_client_cert_is_refused() {
    let d = Daemon::start().await;
    let r = try_call(d.connect_anonymous().await).await;
    assert!(
        r.is_err(),
        "a connection without a client certificate was served"
    );
}

#[tokio::test]
async fn principal_not_allowed_is_denied_and_audited() {
    let d = Daemon::start().await;
    let key = hsmd_e2e::algorithms::create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    let intruder = "spiffe://hsmd.dev/intruder";
    let cert = d.issue_from_dev_ca("intruder", Some(intruder));
    let channel = d
        .connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .unwrap_or_else(|e| panic!("TLS must accept a certificate from the dev CA: {e:?}"));
    let mut keys = KeyServiceClient::new(channel.clone());

    let denied = [
        (
            "GenerateRandom",
            keys.generate_random(GenerateRandomRequest { length: 8 })
                .await
                .map(|_| ()),
        ),
        (
            "DescribeKey",
            keys.describe_key(DescribeKeyRequest {
                key_id: key.clone(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "Sign",
            hsmd_e2e::algorithms::sign(
                &mut keys,
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                b"m",
            )
            .await
            .map(|_| ()),
        ),
    ];
    for (method, result) in denied {
        let rec = d.assert_refused(
            result.map(tonic::Response::new),
            &key_method(method),
            Code::PermissionDenied,
            "ACCESS_DENIED",
        );
        assert_eq!(
            rec.str("principal"),
            intruder,
            "audited principal: {}",
            rec.raw
        );
        assert_eq!(rec.str("outcome"), "denied");
    }
    let r = AuditServiceClient::new(channel)
        .query_audit(QueryAuditRequest::default())
        .await
        .map(|_| ());
    let rec = d.assert_refused(
        r.map(tonic::Response::new),
        "/hsmd.v1.AuditService/QueryAudit",
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    assert_eq!(rec.str("principal"), intruder);
}

#[tokio::test]
async fn principal_falls_back_to_common_name() {
    let d = Daemon::start().await;
    let cert = d.issue_from_dev_ca("cn-only-client", None);
    let channel = d
        .connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .unwrap_or_else(|e| panic!("TLS must accept a certificate from the dev CA: {e:?}"));
    let r = KeyServiceClient::new(channel)
        .generate_random(GenerateRandomRequest { length: 8 })
        .await;
    let rec = d.assert_refused(
        r,
        &key_method("GenerateRandom"),
        Code::PermissionDenied,
        "ACCESS_DENIED",
    );
    assert_eq!(
        rec.str("principal"),
        "cn-only-client",
        "without a SAN URI the principal is the subject CN: {}",
        rec.raw
    );
}

/// Names hsmd gives its own callers cannot come from a certificate: `hsmd` (the
/// sweeps' records) and `kubernetes:<socket>` (the KMS plugin). Such a certificate from
/// the right CA has no identity: UNAUTHENTICATED / NO_CLIENT_IDENTITY, audited with no
/// principal.
#[tokio::test]
async fn reserved_principals_cannot_come_from_a_certificate() {
    let d = Daemon::start().await;
    let as_system = d.issue_from_dev_ca("hsmd", None);
    let as_plugin = d.issue_from_dev_ca("kube", Some("kubernetes:/run/hsmd/kms.sock"));
    for cert in [&as_system, &as_plugin] {
        let channel = d
            .connect_as(&cert.cert_pem, &cert.key_pem)
            .await
            .expect("TLS accepts a certificate of the dev CA");
        let r = KeyServiceClient::new(channel)
            .generate_random(GenerateRandomRequest { length: 8 })
            .await;
        let rec = d.assert_refused(
            r,
            &key_method("GenerateRandom"),
            Code::Unauthenticated,
            "NO_CLIENT_IDENTITY",
        );
        assert_eq!(rec.str("principal"), "", "{}", rec.raw);
    }
}
