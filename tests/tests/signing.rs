//! The signing matrix: every key spec with every algorithm it allows, RAW and DIGEST,
//! signed by hsmd and verified three ways: by the `openssl` CLI with the exported public
//! key, by hsmd's Verify, and (for a tampered message) refused by both.
//!
//! The specs are split over three daemons so the slow RSA-4096 key generation runs in
//! parallel with the rest. Each test collects every failing combination before it fails,
//! so one run names all of them.

use std::{path::Path, process::Command};

use hsmd_e2e::{
    Daemon,
    algorithms::{
        ALL_ALGORITHMS, allowed_algorithms, create_key, digest, message, openssl_key_description,
        openssl_verify, rsa_bytes, sign, verify,
    },
    status::describe,
    tools::{run, write_file},
    v1::{GetPublicKeyRequest, KeySpec, KeyUsage, MessageType, SigningAlgorithm},
};
use tonic::Code;

/// Failures gathered across the matrix.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failing checks:\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// Exports the key's public half, checks it with openssl, writes `pub.pem`.
async fn export_public_key(d: &Daemon, key_id: &str, spec: KeySpec, f: &mut Failures) -> String {
    let resp = d
        .keys()
        .get_public_key(GetPublicKeyRequest {
            key_id: key_id.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetPublicKey {spec:?}: {}", describe(&s)))
        .into_inner();
    f.check(resp.key_id == key_id, || {
        format!(
            "{spec:?}: GetPublicKey key_id {:?} != {key_id}",
            resp.key_id
        )
    });
    f.check(
        resp.spec == spec as i32 && resp.usage == KeyUsage::SignVerify as i32,
        || {
            format!(
                "{spec:?}: GetPublicKey spec/usage {}/{}",
                resp.spec, resp.usage
            )
        },
    );
    let mut got: Vec<i32> = resp.signing_algorithms.clone();
    let mut want: Vec<i32> = allowed_algorithms(spec).iter().map(|a| *a as i32).collect();
    got.sort();
    want.sort();
    f.check(got == want, || {
        format!("{spec:?}: signing_algorithms {got:?}, expected {want:?}")
    });
    let dir = d.scratch();
    let pem_path = write_file(
        &dir,
        &format!("{key_id}.pub.pem"),
        resp.public_key_pem.as_bytes(),
    );
    let text = run(Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-text", "-in"])
        .arg(&pem_path));
    let wanted = openssl_key_description(spec);
    f.check(text.stdout.contains(wanted), || {
        format!(
            "{spec:?}: openssl sees a different key (no {wanted:?}):\n{}",
            text.stdout
        )
    });
    let der_path = dir.join(format!("{key_id}.pub.der"));
    run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pem_path)
        .arg("-out")
        .arg(&der_path));
    let der = std::fs::read(&der_path).expect("read DER");
    f.check(der == resp.public_key_der, || {
        format!("{spec:?}: public_key_der differs from the PEM's DER")
    });
    pem_path.to_string_lossy().into_owned()
}

/// Checks one (spec, algorithm, message type) combination.
#[allow(clippy::too_many_arguments)]
async fn check_combination(
    d: &Daemon,
    key_id: &str,
    spec: KeySpec,
    alg: SigningAlgorithm,
    mt: MessageType,
    pub_pem: &Path,
    seed: u8,
    f: &mut Failures,
) {
    let case = format!("{spec:?}/{alg:?}/{mt:?}");
    let msg = message(1000, seed);
    let input = match mt {
        MessageType::Digest => digest(alg, &msg),
        _ => msg.clone(),
    };
    let mut keys = d.keys();
    let sig = match sign(&mut keys, key_id, alg, mt, &input).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            f.check(
                resp.key_id == key_id && resp.algorithm == alg as i32,
                || {
                    format!(
                        "{case}: SignResponse names {}/{}",
                        resp.key_id, resp.algorithm
                    )
                },
            );
            resp.signature
        }
        Err(s) => return f.0.push(format!("{case}: Sign failed: {}", describe(&s))),
    };
    match (rsa_bytes(spec), alg) {
        (Some(n), _) => f.check(sig.len() == n, || {
            format!("{case}: signature is {} bytes, not {n}", sig.len())
        }),
        (None, SigningAlgorithm::Ed25519Sha512) => f.check(sig.len() == 64, || {
            format!("{case}: Ed25519 signature is {} bytes", sig.len())
        }),
        _ => f.check(sig.first() == Some(&0x30), || {
            format!("{case}: ECDSA signature is not DER")
        }),
    }

    let dir = d.scratch();
    let base = format!("{key_id}-{alg:?}-{mt:?}");
    let msg_path = write_file(&dir, &format!("{base}.msg"), &msg);
    let sig_path = write_file(&dir, &format!("{base}.sig"), &sig);
    let mut tampered = msg.clone();
    tampered[0] ^= 0x01;
    let tampered_path = write_file(&dir, &format!("{base}.tampered"), &tampered);
    f.check(openssl_verify(alg, pub_pem, &msg_path, &sig_path), || {
        format!("{case}: openssl rejects hsmd's signature")
    });
    f.check(
        !openssl_verify(alg, pub_pem, &tampered_path, &sig_path),
        || format!("{case}: openssl accepts the signature on a tampered message"),
    );

    let tampered_input = match mt {
        MessageType::Digest => digest(alg, &tampered),
        _ => tampered.clone(),
    };
    for (input, want, label) in [
        (&input, true, "original"),
        (&tampered_input, false, "tampered"),
    ] {
        match verify(&mut keys, key_id, alg, mt, input, &sig).await {
            Ok(r) => f.check(r.get_ref().valid == want, || {
                format!(
                    "{case}: hsmd Verify on the {label} input answered valid={}",
                    !want
                )
            }),
            Err(s) => f.0.push(format!(
                "{case}: hsmd Verify ({label}) failed: {}",
                describe(&s)
            )),
        }
    }
    if mt == MessageType::Digest {
        // A signature over the digest is a signature over the message.
        match verify(&mut keys, key_id, alg, MessageType::Raw, &msg, &sig).await {
            Ok(r) => f.check(r.get_ref().valid, || {
                format!("{case}: signature over the digest does not verify as RAW")
            }),
            Err(s) => {
                f.0.push(format!("{case}: Verify RAW failed: {}", describe(&s)))
            }
        }
    }
}

/// Algorithms the spec does not allow are refused with ALGORITHM_NOT_ALLOWED.
async fn check_refused_algorithms(d: &Daemon, key_id: &str, spec: KeySpec, f: &mut Failures) {
    let allowed = allowed_algorithms(spec);
    let mut keys = d.keys();
    for alg in ALL_ALGORITHMS.iter().filter(|a| !allowed.contains(a)) {
        let r = sign(&mut keys, key_id, *alg, MessageType::Raw, b"hello").await;
        match r {
            Err(s)
                if s.code() == Code::InvalidArgument
                    && hsmd_e2e::reason_of(&s).as_deref() == Some("ALGORITHM_NOT_ALLOWED") => {}
            Err(s) => f.0.push(format!(
                "{spec:?}/{alg:?}: expected ALGORITHM_NOT_ALLOWED, got {}",
                describe(&s)
            )),
            Ok(_) => f.0.push(format!(
                "{spec:?}/{alg:?}: signing with a disallowed algorithm succeeded"
            )),
        }
    }
    if spec == KeySpec::Ed25519 {
        let r = sign(
            &mut keys,
            key_id,
            SigningAlgorithm::Ed25519Sha512,
            MessageType::Digest,
            &[0u8; 64],
        )
        .await;
        match r {
            Err(s) if s.code() == Code::InvalidArgument => {}
            Err(s) => f.0.push(format!(
                "Ed25519 DIGEST: expected INVALID_ARGUMENT, got {}",
                describe(&s)
            )),
            Ok(_) => {
                f.0.push("Ed25519 DIGEST: signing a digest with pure Ed25519 succeeded".into())
            }
        }
    }
}

async fn run_matrix(specs: &[KeySpec]) {
    let d = Daemon::start().await;
    let mut f = Failures::default();
    for (i, spec) in specs.iter().enumerate() {
        if !d.offers_spec(*spec).await {
            continue;
        }
        let key_id = create_key(&mut d.keys(), *spec, "").await;
        let pub_pem = export_public_key(&d, &key_id, *spec, &mut f).await;
        for (j, alg) in allowed_algorithms(*spec).into_iter().enumerate() {
            let mut types = vec![MessageType::Raw];
            if alg != SigningAlgorithm::Ed25519Sha512 {
                types.push(MessageType::Digest);
            }
            for mt in types {
                let seed = (i * 16 + j) as u8;
                check_combination(
                    &d,
                    &key_id,
                    *spec,
                    alg,
                    mt,
                    Path::new(&pub_pem),
                    seed,
                    &mut f,
                )
                .await;
            }
        }
        check_refused_algorithms(&d, &key_id, *spec, &mut f).await;
    }
    f.assert_none();
}

#[tokio::test]
async fn rsa_2048_and_3072_sign_and_verify() {
    run_matrix(&[KeySpec::Rsa2048, KeySpec::Rsa3072]).await;
}

#[tokio::test]
async fn rsa_4096_sign_and_verify() {
    run_matrix(&[KeySpec::Rsa4096]).await;
}

#[tokio::test]
async fn ec_p256_p384_and_ed25519_sign_and_verify() {
    run_matrix(&[KeySpec::EcP256, KeySpec::EcP384, KeySpec::Ed25519]).await;
}
