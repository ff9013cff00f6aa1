//! Signed audit checkpoints, rotation and offline verification: the checkpoint
//! signature verifies with `openssl dgst -sha256 -verify` on the exact signed bytes;
//! `hsmctl audit verify --public-key` finds and locates every kind of tampering on
//! rotated files; the chain goes on across files and restarts; a torn last line after
//! a crash is moved aside and reported; kill -9 under load loses no answered call's
//! record.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine;
use hsmd_e2e::{
    ADMIN_PRINCIPAL, Daemon,
    algorithms::{create_key, sign},
    args,
    audit::parse_lines,
    configured::with_admin_policy,
    tools::openssl,
    v1::{KeySpec, MessageType, QueryAuditRequest, SigningAlgorithm},
};
use serde_json::Value;

const ROTATING: &str = r#"
[audit]
checkpoint_every = 10
checkpoint_interval = "1h"
max_file_bytes = 8192
"#;

/// Makes `n` signing calls.
async fn calls(d: &Daemon, key: &str, n: usize) {
    let mut keys = d.keys();
    for i in 0..n {
        sign(
            &mut keys,
            key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            &i.to_le_bytes(),
        )
        .await
        .expect("sign");
    }
}

fn audit_dir(d: &Daemon) -> PathBuf {
    d.data_dir().join("audit")
}

/// The log files, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("audit.log.") && !n.contains("torn")
        })
        .collect();
    rotated.sort();
    rotated.push(dir.join("audit.log"));
    rotated
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    fs::write(
        p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// Recomputes a record's own hash after an edit (as a careful forger would).
fn rehash(line: &str) -> String {
    use sha2::{Digest, Sha256};
    let i = line.rfind(",\"hash\":\"").unwrap();
    let body = format!("{}}}", &line[..i]);
    let h = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{},\"hash\":\"{h}\"}}", &line[..i])
}

#[tokio::test]
async fn checkpoints_rotation_and_offline_verification() {
    let (mut d, _) = Daemon::start_configured(&with_admin_policy(ROTATING)).await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "cp").await;
    calls(&d, &key, 60).await;
    let pem = d.scratch().join("audit.pem");
    let out = d.hsmctl(args!["audit", "public-key", "--out", &pem]);
    assert!(out.success(), "{}", out.describe());
    d.stop().await;
    let dir = audit_dir(&d);
    let all = files(&dir);
    assert!(all.len() >= 3, "the log rotated: {all:?}");

    // One chain across the files, each rotated file sealed by a checkpoint, the log
    // ending with the shutdown checkpoint.
    let mut recs = Vec::new();
    for f in &all {
        let ls = parse_lines(&fs::read_to_string(f).unwrap());
        if f.file_name().unwrap() != "audit.log" {
            assert_eq!(
                ls.last().unwrap().str("method"),
                "hsmd/AuditCheckpoint",
                "{} ends with a checkpoint",
                f.display()
            );
            let first = ls[0].seq();
            assert!(f.to_string_lossy().ends_with(&format!("{first:012}")));
        }
        recs.extend(ls);
    }
    hsmd_e2e::audit::check_chain(&recs).expect("one chain across files");
    let last = recs.last().unwrap();
    assert_eq!(last.str("method"), "hsmd/AuditCheckpoint");

    // openssl verifies a checkpoint signature on the exact signed bytes.
    let cp = &last.json["checkpoint"];
    let statement = format!(
        "hsmd-audit-checkpoint/v1\nseq={}\nhash={}\n",
        cp["seq"].as_u64().unwrap(),
        cp["hash"].as_str().unwrap()
    );
    assert_eq!(cp["hash"].as_str().unwrap(), last.str("prev_hash"));
    let msg = d.scratch().join("statement");
    fs::write(&msg, &statement).unwrap();
    let sig = d.scratch().join("checkpoint.sig");
    let der = base64::engine::general_purpose::STANDARD
        .decode(cp["signature"].as_str().unwrap())
        .unwrap();
    fs::write(&sig, der).unwrap();
    let out = openssl(args![
        "dgst",
        "-sha256",
        "-verify",
        &pem,
        "-signature",
        &sig,
        &msg
    ]);
    assert!(out.stdout.contains("Verified OK"), "{}", out.describe());

    // Offline verification of the untouched log.
    let verify = |dir: &Path| {
        d.hsmctl(args![
            "audit",
            "verify",
            "--public-key",
            &pem,
            "--sealed",
            dir
        ])
    };
    let out = verify(&dir);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.starts_with("ok: "), "{}", out.stdout);

    // Each kind of tampering, on a rotated file, found and located.
    let victim_name = all[1].file_name().unwrap().to_string_lossy().into_owned();
    type Tamper = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Tamper, &str, usize)> = vec![
        (
            "edited",
            Box::new(|l| {
                l[3] = l[3].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
            }),
            "edited",
            4,
        ),
        (
            "edited-rehashed",
            Box::new(|l| {
                l[3] = rehash(&l[3].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\""));
            }),
            "edited",
            4,
        ),
        (
            "inserted",
            Box::new(|l| {
                let x = rehash(&l[3].replace("\"outcome\":\"ok\"", "\"outcome\":\"failed\""));
                l.insert(3, x);
            }),
            "inserted",
            4,
        ),
        (
            "deleted",
            Box::new(|l| {
                l.remove(3);
            }),
            "deleted",
            4,
        ),
        ("reordered", Box::new(|l| l.swap(2, 3)), "reordered", 3),
    ];
    for (name, tamper, kind, line) in cases {
        let copy = d.scratch().join(format!("tamper-{name}"));
        copy_dir(&dir, &copy);
        let victim = copy.join(&victim_name);
        let mut ls = lines(&victim);
        let seq_at = |l: &str| -> u64 {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        };
        let expected_seq = if name == "deleted" {
            seq_at(&ls[4])
        } else {
            seq_at(&ls[3])
        };
        tamper(&mut ls);
        write_lines(&victim, &ls);
        let out = verify(&copy);
        assert_eq!(out.code, Some(1), "{name}: {}", out.describe());
        let want = format!("{kind}: {}:{line} (seq {expected_seq})", victim.display());
        assert!(
            out.stdout.contains(&want),
            "{name}: expected `{want}` in\n{}",
            out.stdout
        );
    }

    // A truncated tail: the last record (a checkpoint) cut off.
    let copy = d.scratch().join("tamper-truncated");
    copy_dir(&dir, &copy);
    let last_file = files(&copy)
        .into_iter()
        .rev()
        .find(|f| !lines(f).is_empty())
        .unwrap();
    let mut ls = lines(&last_file);
    ls.pop();
    write_lines(&last_file, &ls);
    let out = verify(&copy);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stdout.contains("truncated-tail: "), "{}", out.stdout);

    // A forged checkpoint signature.
    let copy = d.scratch().join("tamper-signature");
    copy_dir(&dir, &copy);
    let cur = files(&copy)
        .into_iter()
        .rev()
        .find(|f| !lines(f).is_empty())
        .unwrap();
    let mut ls = lines(&cur);
    let n = ls.len() - 1;
    let v: Value = serde_json::from_str(&ls[n]).unwrap();
    let good = v["checkpoint"]["signature"].as_str().unwrap().to_string();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&good)
        .unwrap();
    let end = raw.len() - 1;
    raw[end] ^= 1;
    let bad = base64::engine::general_purpose::STANDARD.encode(raw);
    ls[n] = rehash(&ls[n].replace(&good, &bad));
    write_lines(&cur, &ls);
    let out = verify(&copy);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stdout.contains("bad-signature: "), "{}", out.stdout);

    // After a restart the chain goes on, and queries read every file.
    d.start_again().await;
    calls(&d, &key, 3).await;
    let mut stream = d
        .audit()
        .query_audit(QueryAuditRequest {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        seqs.push(r.sequence);
    }
    assert_eq!(seqs[0], 1, "QueryAudit reads the rotated files too");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    let out = d.hsmctl(["audit", "verify"]);
    assert!(out.success(), "{}", out.describe());

    // Review: a summary per principal and method, and filtered queries.
    let out = d.hsmctl(["audit", "stats", "--since", "1h"]);
    assert!(out.success(), "{}", out.describe());
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(ADMIN_PRINCIPAL) && l.contains(" Sign "))
        .unwrap_or_else(|| panic!("no Sign row:\n{}", out.stdout));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[2], "63", "60 + 3 signatures, all ok: {row}");
    let out = d.hsmctl([
        "audit",
        "query",
        "--since",
        "1h",
        "--method",
        "Sign",
        "--outcome",
        "ok",
        "--principal",
        ADMIN_PRINCIPAL,
        "--key",
        key.as_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.lines().count(), 1 + 63, "{}", out.stdout);
    assert!(out.stdout.starts_with("TIME"), "{}", out.stdout);
}

#[tokio::test]
async fn torn_last_line_is_moved_aside_and_reported() {
    let mut d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    calls(&d, &key, 3).await;
    d.stop().await;
    let log = d.audit_log_path();
    let mut text = fs::read(&log).unwrap();
    text.extend_from_slice(b"{\"seq\":999,\"time\":\"2026-");
    fs::write(&log, text).unwrap();
    d.start_again().await;
    let recs = d.audit_lines();
    let torn: Vec<_> = recs
        .iter()
        .filter(|r| r.str("method") == "hsmd/TornLineRemoved")
        .collect();
    assert_eq!(torn.len(), 1, "one record reports the torn line");
    assert_eq!(torn[0].str("reason"), "TORN_LINE_REMOVED");
    let aside: Vec<PathBuf> = fs::read_dir(audit_dir(&d))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.log.torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(torn[0].str("note").contains(&name), "{}", torn[0].raw);
    assert_eq!(
        fs::read(&aside[0]).unwrap(),
        b"{\"seq\":999,\"time\":\"2026-"
    );
    hsmd_e2e::audit::check_chain(&recs).expect("chain intact after recovery");
    let out = d.hsmctl(["audit", "verify"]);
    assert!(out.success(), "{}", out.describe());
}

#[tokio::test]
async fn kill_9_under_load_loses_no_answered_record() {
    let mut d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    let pem = d.scratch().join("audit.pem");
    assert!(
        d.hsmctl(args!["audit", "public-key", "--out", &pem])
            .success()
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut workers = Vec::new();
    for w in 0..8u8 {
        let mut keys = d.keys();
        let (key, tx) = (key.clone(), tx.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..10_000u32 {
                let msg = [w, (i % 251) as u8];
                match sign(
                    &mut keys,
                    &key,
                    SigningAlgorithm::EcdsaSha256,
                    MessageType::Raw,
                    &msg,
                )
                .await
                {
                    Ok(resp) => {
                        let rid = hsmd_e2e::request_id(resp.metadata(), "sign");
                        if tx.send(rid).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.kill_hard();
    for w in workers {
        let _ = w.await;
    }
    drop(tx);
    let mut answered = HashSet::new();
    while let Some(rid) = rx.recv().await {
        answered.insert(rid);
    }
    assert!(
        answered.len() > 20,
        "load ran ({} answered)",
        answered.len()
    );

    d.verify_offline_after_crash(&pem, "kill -9 under load");
    d.start_again().await;
    let recs = d.audit_lines();
    let logged: HashSet<&str> = recs.iter().map(|r| r.str("request_id")).collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|r| !logged.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "answered calls without a record: {missing:?}"
    );
    hsmd_e2e::audit::check_chain(&recs).expect("chain whole after restart");
    let out = d.hsmctl(["audit", "verify"]);
    assert!(out.success(), "{}", out.describe());
    let out = d.hsmctl(args![
        "audit",
        "verify",
        "--public-key",
        &pem,
        audit_dir(&d)
    ]);
    assert!(out.success(), "{}", out.describe());
}
