//! CSRs and certificates end to end: requests made with `hsmctl csr` for every key spec
//! and algorithm are checked by `openssl req -verify` and `openssl req -text`; a test CA
//! (the openssl CLI) issues a certificate that hsmd imports, returns and stores in the
//! token (seen by `pkcs11-tool`); self-signed certificates pass `openssl verify`; bad
//! subjects and SANs are refused with their own reasons, and every call is audited.

use std::path::{Path, PathBuf};

use hsmd_e2e::{
    Daemon, Need,
    algorithms::create_key,
    args,
    certs::make_ca,
    expect_error, expect_ok,
    pkcs11::key_id_hex,
    tools::{CmdOutput, openssl, run_unchecked, write_file},
    v1::{
        GenerateCsrRequest, GetCertificateRequest, GetPublicKeyRequest, ImportCertificateRequest,
        KeySpec, SubjectAltName, certificate_service_client::CertificateServiceClient,
        subject_alt_name::Name,
    },
};
use tonic::{Code, transport::Channel};

const METHOD: &str = "/hsmd.v1.CertificateService/";

fn certs(d: &Daemon) -> CertificateServiceClient<Channel> {
    CertificateServiceClient::new(d.channel())
}

async fn public_pem(d: &Daemon, key: &str) -> String {
    let req = GetPublicKeyRequest {
        key_id: key.to_owned(),
    };
    let resp = d.keys().get_public_key(req).await.expect("GetPublicKey");
    resp.into_inner().public_key_pem
}

/// `openssl <args> -in F` with the public key it prints (`-pubkey`).
fn openssl_pubkey(kind: &str, file: &Path) -> String {
    openssl(args![kind, "-in", file, "-noout", "-pubkey"]).stdout
}

fn csr_text(file: &Path) -> String {
    openssl(args![
        "req", "-in", file, "-noout", "-text", "-nameopt", "utf8"
    ])
    .stdout
}

/// Runs `hsmctl csr KEY --subject S --out F EXTRA...` and checks the request with
/// `openssl req -verify`; returns F.
fn hsmctl_csr(d: &Daemon, key: &str, name: &str, subject: &str, extra: &[&str]) -> PathBuf {
    let out = d.scratch().join(format!("{name}.csr"));
    let mut a = args!["csr", key, "--subject", subject, "--out", &out];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    d.hsmctl_ok(a);
    let verify = openssl(args!["req", "-verify", "-noout", "-in", &out]);
    assert!(
        format!("{}{}", verify.stdout, verify.stderr).contains("verify OK"),
        "openssl req -verify for {name}\n{}",
        verify.describe()
    );
    out
}

/// An algorithm name ("": the spec's default) and what `openssl req -text` must show.
type AlgorithmCase<'a> = (&'a str, &'a [&'a str]);

/// Every key spec with every algorithm it allows: the token-signed request verifies,
/// names the right signature algorithm (RSA-PSS with its parameters), and carries the
/// key's public key. Self-signed certificates of each spec pass `openssl verify`.
#[tokio::test]
async fn csr_and_self_signed_for_every_spec_and_algorithm() {
    let d = Daemon::start().await;
    let cases: &[(KeySpec, &[AlgorithmCase])] = &[
        (
            KeySpec::Rsa2048,
            &[
                ("", &["sha256WithRSAEncryption"]),
                ("RSA_PKCS1_SHA_384", &["sha384WithRSAEncryption"]),
                ("RSA_PKCS1_SHA_512", &["sha512WithRSAEncryption"]),
                (
                    "RSA_PSS_SHA_256",
                    &[
                        "rsassaPss",
                        "Hash Algorithm: sha256",
                        "mgf1 with sha256",
                        "Salt Length: 0x20",
                    ],
                ),
                (
                    "RSA_PSS_SHA_384",
                    &[
                        "rsassaPss",
                        "Hash Algorithm: sha384",
                        "mgf1 with sha384",
                        "Salt Length: 0x30",
                    ],
                ),
                (
                    "RSA_PSS_SHA_512",
                    &[
                        "rsassaPss",
                        "Hash Algorithm: sha512",
                        "mgf1 with sha512",
                        "Salt Length: 0x40",
                    ],
                ),
            ],
        ),
        (KeySpec::EcP256, &[("", &["ecdsa-with-SHA256"])]),
        (
            KeySpec::EcP384,
            &[("ECDSA_SHA_384", &["ecdsa-with-SHA384"])],
        ),
        (KeySpec::Ed25519, &[("", &["ED25519"])]),
    ];
    let mut made = 0;
    for (spec, algs) in cases {
        if !d.offers_spec(*spec).await {
            continue;
        }
        made += algs.len();
        let key = create_key(&mut d.keys(), *spec, "").await;
        let public = public_pem(&d, &key).await;
        for (alg, want) in *algs {
            let name = format!("{spec:?}-{alg}");
            let extra: Vec<&str> = if alg.is_empty() {
                vec![]
            } else {
                vec!["--algorithm", alg]
            };
            let csr = hsmctl_csr(&d, &key, &name, &format!("CN={name},O=Example"), &extra);
            let text = csr_text(&csr);
            for w in *want {
                assert!(
                    text.contains(w),
                    "{name}: `openssl req -text` lacks {w:?}:\n{text}"
                );
            }
            assert_eq!(
                openssl_pubkey("req", &csr),
                public,
                "{name}: CSR public key"
            );
        }
        // Self-signed, with the spec's default algorithm (RSA: PSS to cover its params).
        let self_pem = d.scratch().join(format!("{spec:?}-self.pem"));
        let mut a = args![
            "cert",
            "self-signed",
            &key,
            "--subject",
            format!("CN=self {spec:?},O=示例公司")
        ];
        a.extend(args![
            "--days",
            "30",
            "--out",
            &self_pem,
            "--san",
            "dns:self.example"
        ]);
        a.extend(args![
            "--key-usage",
            "digitalSignature",
            "--ext-key-usage",
            "serverAuth"
        ]);
        if *spec == KeySpec::Rsa2048 {
            a.extend(args!["--algorithm", "RSA_PSS_SHA_256"]);
        }
        d.hsmctl_ok(a);
        let ok = openssl(args!["verify", "-CAfile", &self_pem, &self_pem]);
        assert!(
            ok.stdout.contains(": OK"),
            "{spec:?} self-signed\n{}",
            ok.describe()
        );
        assert_eq!(
            openssl_pubkey("x509", &self_pem),
            public,
            "{spec:?}: certificate public key"
        );
        let text = openssl(args![
            "x509", "-in", &self_pem, "-noout", "-text", "-nameopt", "utf8"
        ])
        .stdout;
        assert!(
            text.contains("O=示例公司, CN=self"),
            "{spec:?} subject:\n{text}"
        );
        let checkend = |secs: &str| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(args!["x509", "-in", &self_pem, "-noout", "-checkend", secs]);
            run_unchecked(&mut cmd).success()
        };
        assert!(
            checkend("2590000") && !checkend("2600000"),
            "{spec:?}: valid for 30 days"
        );
    }
    let lines = d.audit_lines();
    let csrs = lines
        .iter()
        .filter(|l| l.str("method") == format!("{METHOD}GenerateCsr"))
        .count();
    assert_eq!(csrs, made, "every GenerateCsr is audited");
    let pss = lines
        .iter()
        .find(|l| {
            l.str("method").ends_with("GenerateCsr") && l.str("algorithm") == "RSA_PSS_SHA_384"
        })
        .expect("audit record names the algorithm");
    assert_eq!(
        pss.str("input_sha256").len(),
        64,
        "hash of the signed request info: {}",
        pss.raw
    );
}

/// The subject (a UTF-8 organisation, an escaped comma, a multi-valued RDN) and every
/// kind of SAN come out exactly as requested.
#[tokio::test]
async fn csr_shows_subject_and_every_san() {
    let d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    let subject = "CN=app.example.com,OU=Pay\\, Cards,O=示例公司,L=深圳,C=CN";
    let sans = [
        "dns:app.example.com",
        "dns:*.app.example.com",
        "ip:10.0.0.1",
        "ip:2001:db8::1",
        "uri:spiffe://corp/payments",
        "email:ops@example.com",
    ];
    let mut extra: Vec<&str> = sans.iter().flat_map(|s| ["--san", *s]).collect();
    extra.extend([
        "--key-usage",
        "digitalSignature,keyAgreement",
        "--ext-key-usage",
        "serverAuth,clientAuth",
    ]);
    let csr = hsmctl_csr(&d, &key, "app", subject, &extra);

    // RFC 4514 order round-trips through openssl's RFC 2253 printer, byte for byte.
    let rfc = openssl(args![
        "req",
        "-in",
        &csr,
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253,-esc_msb"
    ]);
    assert_eq!(
        rfc.stdout.trim(),
        format!("subject={subject}"),
        "{}",
        rfc.describe()
    );
    let text = csr_text(&csr);
    assert!(
        // `-nameopt utf8` prints values unescaped; the RFC 2253 line above shows the escape.
        text.contains("Subject: C=CN, L=深圳, O=示例公司, OU=Pay, Cards, CN=app.example.com"),
        "{text}"
    );
    for want in [
        "DNS:app.example.com, DNS:*.app.example.com, IP Address:10.0.0.1, IP Address:2001:DB8:0:0:0:0:0:1, \
         URI:spiffe://corp/payments, email:ops@example.com",
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Agreement",
        "TLS Web Server Authentication, TLS Web Client Authentication",
    ] {
        assert!(
            text.contains(want),
            "`openssl req -text` lacks {want:?}:\n{text}"
        );
    }
    // The organisation is a UTF8String holding exactly the UTF-8 bytes given.
    let der = openssl(args![
        "req",
        "-in",
        &csr,
        "-outform",
        "DER",
        "-out",
        d.scratch().join("app.der")
    ]);
    assert!(der.success());
    let bytes = std::fs::read(d.scratch().join("app.der")).unwrap();
    let utf8 = [&[0x0c, 12][..], "示例公司".as_bytes()].concat();
    assert!(
        bytes.windows(utf8.len()).any(|w| w == utf8),
        "UTF8String O= not byte-exact"
    );

    // A multi-valued RDN: both attributes in one SET.
    let mv = hsmctl_csr(&d, &key, "mv", "CN=svc+UID=42,O=Example", &[]);
    let rfc = openssl(args![
        "req", "-in", &mv, "-noout", "-subject", "-nameopt", "RFC2253"
    ]);
    let line = rfc.stdout.trim();
    assert!(
        line == "subject=CN=svc+UID=42,O=Example" || line == "subject=UID=42+CN=svc,O=Example",
        "{line}"
    );
}

fn req(key: &str, subject: &str, sans: Vec<Name>) -> GenerateCsrRequest {
    GenerateCsrRequest {
        key_id: key.to_owned(),
        subject: subject.to_owned(),
        subject_alt_names: sans
            .into_iter()
            .map(|n| SubjectAltName { name: Some(n) })
            .collect(),
        ..Default::default()
    }
}

/// Bad subjects and SANs: INVALID_ARGUMENT with INVALID_SUBJECT / INVALID_SAN, a message
/// naming the bad part, and an audit record; hsmctl prints the same.
#[tokio::test]
async fn bad_subjects_and_sans_are_refused_by_part() {
    let d = Daemon::start().await;
    // Ed25519 signs fastest; where the token has none, P-256 does the same job.
    let spec = if d.offers(Need::Ed25519).await {
        KeySpec::Ed25519
    } else {
        KeySpec::EcP256
    };
    let key = create_key(&mut d.keys(), spec, "").await;
    let ok = |s: &str| Name::DnsName(s.to_owned());
    let cases: Vec<(GenerateCsrRequest, &str, &str)> = vec![
        (
            req(&key, "", vec![]),
            "INVALID_SUBJECT",
            "subject is required",
        ),
        (
            req(&key, "XX=foo", vec![]),
            "INVALID_SUBJECT",
            "unknown attribute 'XX'",
        ),
        (
            req(&key, "CN=a,C=China", vec![]),
            "INVALID_SUBJECT",
            "two-letter",
        ),
        (
            req(&key, "CN=a,,O=b", vec![]),
            "INVALID_SUBJECT",
            "after 'CN=a'",
        ),
        (
            req(&key, "CN=a\\q", vec![]),
            "INVALID_SUBJECT",
            "bad escape '\\q'",
        ),
        (
            req(&key, "CN=a", vec![ok("bücher.example")]),
            "INVALID_SAN",
            "punycode",
        ),
        (
            req(&key, "CN=a", vec![Name::IpAddress("10.0.0.300".into())]),
            "INVALID_SAN",
            "ip:10.0.0.300",
        ),
        (
            req(&key, "CN=a", vec![Name::Uri("no-scheme".into())]),
            "INVALID_SAN",
            "uri:no-scheme has no scheme",
        ),
        (
            req(&key, "CN=a", vec![Name::Email("nobody".into())]),
            "INVALID_SAN",
            "email:nobody has no '@'",
        ),
        (
            req(&key, "CN=a", vec![ok("a.example"), ok("a.example")]),
            "INVALID_SAN",
            "name 2 repeats",
        ),
    ];
    for (r, reason, part) in cases {
        let what = format!("subject {:?} sans {:?}", r.subject, r.subject_alt_names);
        let result = certs(&d).generate_csr(r).await;
        let status = result
            .as_ref()
            .err()
            .map(|s| s.message().to_owned())
            .unwrap_or_default();
        let id = expect_error(result, Code::InvalidArgument, reason, &what);
        assert!(
            status.contains(part),
            "{what}: message {status:?} should contain {part:?}"
        );
        d.assert_audited(
            &id,
            &format!("{METHOD}GenerateCsr"),
            "invalid",
            "INVALID_ARGUMENT",
            reason,
        );
    }
    let out = d.hsmctl(args![
        "csr",
        &key,
        "--subject",
        "CN=a",
        "--san",
        "dns:bücher.example"
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .starts_with("error: INVALID_ARGUMENT INVALID_SAN: "),
        "{}",
        out.describe()
    );
}

/// A test CA issues a certificate for a CSR made by hsmd: its public key is the key's,
/// ImportCertificate takes it (and refuses it for another key), GetCertificate returns
/// it, and pkcs11-tool sees it in the token next to the key.
#[tokio::test]
async fn issued_certificate_is_imported_returned_and_in_the_token() {
    let d = Daemon::start().await;
    let dir = d.scratch();
    let ca = make_ca(&dir, "test");
    let key = create_key(&mut d.keys(), KeySpec::Rsa2048, "").await;
    let other = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    let csr = hsmctl_csr(
        &d,
        &key,
        "app",
        "CN=app.example.com,O=Example",
        &["--san", "dns:app.example.com"],
    );
    let app = issue(&dir, "app", &csr, &ca.cert_path, &ca.key_path);
    assert_eq!(
        openssl_pubkey("x509", &app),
        public_pem(&d, &key).await,
        "issued certificate's key"
    );
    let chain = [std::fs::read(&app).unwrap(), ca.cert_pem.clone()].concat();

    // Refused for another key, and for a certificate of another key.
    let r = ImportCertificateRequest {
        key_id: other.clone(),
        certificate_chain: chain.clone(),
    };
    let id = expect_error(
        certs(&d).import_certificate(r).await,
        Code::FailedPrecondition,
        "CERTIFICATE_KEY_MISMATCH",
        "other key",
    );
    d.assert_audited(
        &id,
        &format!("{METHOD}ImportCertificate"),
        "invalid",
        "FAILED_PRECONDITION",
        "CERTIFICATE_KEY_MISMATCH",
    );
    let other_csr = hsmctl_csr(&d, &other, "other", "CN=other", &[]);
    let other_cert = issue(&dir, "other", &other_csr, &ca.cert_path, &ca.key_path);
    let r = ImportCertificateRequest {
        key_id: key.clone(),
        certificate_chain: std::fs::read(&other_cert).unwrap(),
    };
    expect_error(
        certs(&d).import_certificate(r).await,
        Code::FailedPrecondition,
        "CERTIFICATE_KEY_MISMATCH",
        "other cert",
    );
    // A chain whose second certificate did not issue the first, and nothing yet to get.
    let broken = [
        std::fs::read(&app).unwrap(),
        std::fs::read(&other_cert).unwrap(),
    ]
    .concat();
    let r = ImportCertificateRequest {
        key_id: key.clone(),
        certificate_chain: broken,
    };
    let result = certs(&d).import_certificate(r).await;
    let message = result
        .as_ref()
        .err()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    expect_error(
        result,
        Code::InvalidArgument,
        "INVALID_CERTIFICATE",
        "broken chain",
    );
    assert!(
        message.contains("certificate 2 (subject 'CN=other') did not issue certificate 1"),
        "{message}"
    );
    let get = GetCertificateRequest {
        key_id: key.clone(),
    };
    expect_error(
        certs(&d).get_certificate(get.clone()).await,
        Code::NotFound,
        "CERTIFICATE_NOT_FOUND",
        "before import",
    );

    // Accepted with hsmctl (PEM chain), then returned.
    let chain_path = write_file(&dir, "chain.pem", &chain);
    let shown = d.hsmctl_ok(args!["cert", "import", &key, "--in", &chain_path]);
    assert!(
        shown.contains("chain_length   2") && shown.contains("issuer         CN=test CA"),
        "{shown}"
    );
    let (got, id) = expect_ok(certs(&d).get_certificate(get).await, "GetCertificate");
    d.assert_audited(&id, &format!("{METHOD}GetCertificate"), "ok", "OK", "");
    let app_der = d.scratch().join("app.der");
    openssl(args![
        "x509", "-in", &app, "-outform", "DER", "-out", &app_der
    ]);
    assert_eq!(
        got.certificate_der,
        std::fs::read(&app_der).unwrap(),
        "leaf DER as issued"
    );
    assert_eq!(got.chain_der.len(), 2);
    assert_eq!(
        got.chain_pem.as_bytes(),
        chain.as_slice(),
        "chain PEM as imported"
    );
    assert_eq!(
        got.info.as_ref().unwrap().subject,
        "CN=app.example.com,O=Example"
    );
    let fetched = dir.join("fetched.pem");
    d.hsmctl_ok(args!["cert", "get", &key, "--out", &fetched]);
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&app).unwrap()
    );

    // The leaf is a certificate object with the key's CKA_ID and CKA_LABEL.
    let objects = d.token_objects(true);
    let cert = objects
        .iter()
        .find(|o| o.header.starts_with("Certificate Object"))
        .unwrap_or_else(|| panic!("no certificate object in the token: {objects:?}"));
    assert_eq!(cert.field("ID"), key_id_hex(&key));
    assert_eq!(cert.field("label"), key);
    assert!(
        cert.field("subject").contains("CN=app.example.com"),
        "{cert:?}"
    );
    assert!(
        objects
            .iter()
            .any(|o| o.is_private_key() && o.field("ID") == key_id_hex(&key))
    );
    let cert_objects = objects
        .iter()
        .filter(|o| o.header.starts_with("Certificate Object"))
        .count();
    assert_eq!(cert_objects, 1);
}

/// `openssl x509 -req -CA ... -in CSR` with the request's extensions copied.
fn issue(dir: &Path, name: &str, csr: &Path, ca_cert: &Path, ca_key: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.pem"));
    let serial = format!("0x{}", hex::encode(uuid::Uuid::new_v4().as_bytes()));
    let r: CmdOutput = openssl(args![
        "x509",
        "-req",
        "-CA",
        ca_cert,
        "-CAkey",
        ca_key,
        "-in",
        csr,
        "-set_serial",
        serial,
        "-days",
        "2",
        "-copy_extensions",
        "copy",
        "-out",
        &out
    ]);
    assert!(r.success());
    out
}

/// Server reflection lists the service, so grpcurl and friends find it.
#[tokio::test]
async fn reflection_lists_the_certificate_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let d = Daemon::start().await;
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
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "hsmd.v1.CertificateService"),
        "{list:?}"
    );
}
