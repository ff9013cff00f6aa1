//! Client certificates the CA revoked (in a CRL named by `tls.crl`) or that expired are
//! refused at the TLS handshake, even for principals the policy allows everything; a
//! new CRL takes effect on SIGHUP without a restart, and a CRL file that does not load
//! keeps the previous one in force. The certificates, the revocations, the CRLs and the
//! expired dates all come from `openssl ca`.

use std::{fs, time::Duration};

use hsmd_e2e::{
    Daemon,
    certs::{CertKey, OpensslCa},
    configured::with_admin_policy,
    status::{describe, reason_of},
    v1::{GenerateRandomRequest, key_service_client::KeyServiceClient},
};

const GOOD: &str = "spiffe://hsmd.dev/good";
const REVOKED: &str = "spiffe://hsmd.dev/revoked";
const LATER: &str = "spiffe://hsmd.dev/revoked-later";
const EXPIRED: &str = "spiffe://hsmd.dev/expired";

/// Every principal may do everything: only TLS can stop a certificate.
fn policy(crl: Option<&std::path::Path>) -> String {
    let tls = crl
        .map(|p| format!("[tls]\ncrl = [\"{}\"]\n", p.display()))
        .unwrap_or_default();
    with_admin_policy(&format!(
        "[[policy.rules]]\nprincipals = [\"{GOOD}\", \"{REVOKED}\", \"{LATER}\", \"{EXPIRED}\"]\n\
         actions = [\"*\"]\nkeys = [\"*\"]\n{tls}"
    ))
}

/// Connects with `cert` and makes one call; `Err` when TLS refused the certificate.
async fn call_as(d: &Daemon, cert: &CertKey) -> Result<(), String> {
    let channel = d
        .connect_as(&cert.cert_pem, &cert.key_pem)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    match KeyServiceClient::new(channel)
        .generate_random(GenerateRandomRequest { length: 8 })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) => {
            assert!(
                reason_of(&status).is_none() && status.metadata().get("x-request-id").is_none(),
                "hsmd answered at the gRPC level, so TLS accepted the certificate: {}",
                describe(&status)
            );
            Err(describe(&status))
        }
    }
}

/// Rewrites the config with `crl`, sends SIGHUP and waits until `cert` is refused.
async fn reload_until_refused(
    d: &Daemon,
    config: &std::path::Path,
    crl: &std::path::Path,
    cert: &CertKey,
) {
    fs::write(config, d.configured_text(&policy(Some(crl)))).expect("write config");
    d.sighup();
    for _ in 0..100 {
        if call_as(d, cert).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} still accepted after SIGHUP with a CRL that revokes it",
        cert.cert_path.display()
    );
}

fn records_of(d: &Daemon, principal: &str) -> usize {
    d.audit_lines()
        .iter()
        .filter(|l| l.str("principal") == principal)
        .count()
}

#[tokio::test]
async fn revoked_and_expired_client_certificates_are_refused() {
    let (d, config) = Daemon::start_configured(&policy(None)).await;
    let ca = OpensslCa::dev(&d);
    let good = ca.issue("good", GOOD, None);
    let revoked = ca.issue("revoked", REVOKED, None);
    let later = ca.issue("later", LATER, None);
    let expired = ca.issue(
        "expired",
        EXPIRED,
        Some(("20200101000000Z", "20200102000000Z")),
    );
    // Without a CRL the policy lets them all in (but the expired one).
    for cert in [&good, &revoked, &later] {
        call_as(&d, cert)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", cert.cert_path.display()));
    }
    assert!(
        call_as(&d, &expired).await.is_err(),
        "an expired client certificate was accepted"
    );

    ca.revoke(&revoked);
    let crl = ca.crl("crl-1.pem");
    reload_until_refused(&d, &config, &crl, &revoked).await;
    let revoked_records = records_of(&d, REVOKED);
    call_as(&d, &good)
        .await
        .expect("a good certificate after the CRL");
    call_as(&d, &later)
        .await
        .expect("a certificate the CRL does not name");
    assert!(call_as(&d, &expired).await.is_err(), "expired, with a CRL");

    // The next CRL also revokes `later`; the same file, read again on SIGHUP.
    ca.revoke(&later);
    let crl2 = ca.crl("crl-2.pem");
    fs::copy(&crl2, &crl).expect("replace the CRL");
    reload_until_refused(&d, &config, &crl, &later).await;
    call_as(&d, &good).await.expect("good after the second CRL");
    assert!(
        call_as(&d, &revoked).await.is_err(),
        "revoked after the second CRL"
    );

    // A CRL file that does not load keeps the previous TLS settings in force.
    fs::write(&crl, "not a CRL\n").expect("break the CRL");
    d.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.stderr_text().contains("TLS reload refused"),
        "a broken CRL was not reported"
    );
    call_as(&d, &good).await.expect("good after a broken CRL");
    assert!(
        call_as(&d, &later).await.is_err(),
        "a broken CRL let a revoked certificate in"
    );

    // Refused handshakes never reach hsmd's calls, so nothing is audited under them.
    assert_eq!(
        records_of(&d, REVOKED),
        revoked_records,
        "calls were audited for a revoked certificate"
    );
    assert_eq!(
        records_of(&d, EXPIRED),
        0,
        "an expired certificate was audited"
    );
}
