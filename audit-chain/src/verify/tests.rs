//! Every kind of tampering on a signed log, each found and located.

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

use super::*;
use crate::record::{AuditEvent, CHECKPOINT_METHOD, Outcome};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}

/// `n` records with a checkpoint after every 4 calls and one at the end.
fn log(n: u64) -> Vec<String> {
    let mut head = ChainHead::default();
    let mut lines = Vec::new();
    let mut push = |ev: AuditEvent, head: &mut ChainHead| {
        let rec = AuditRecord::new(ev, head.sequence + 1, "t".into(), head.hash.clone());
        *head = ChainHead {
            sequence: rec.seq,
            hash: rec.hash.clone(),
        };
        lines.push(rec.to_line());
    };
    let checkpoint = |head: &ChainHead| {
        let sig: Signature = key().sign(&Checkpoint::statement(head.sequence, &head.hash));
        AuditEvent {
            method: CHECKPOINT_METHOD.into(),
            outcome: Some(Outcome::Ok),
            checkpoint: Some(Checkpoint {
                seq: head.sequence,
                hash: head.hash.clone(),
                signature: base64::engine::general_purpose::STANDARD.encode(sig.to_der()),
            }),
            ..Default::default()
        }
    };
    for i in 1..=n {
        let ev = AuditEvent {
            method: format!("m{i}"),
            outcome: Some(Outcome::Ok),
            ..Default::default()
        };
        push(ev, &mut head);
        if i % 4 == 0 || i == n {
            let cp = checkpoint(&head);
            push(cp, &mut head);
        }
    }
    lines
}

fn verifier() -> Verifier {
    Verifier::with_key(*key().verifying_key()).sealed(true)
}

/// Verifies `files` from readers (the full walk) and from files (the fast path, which
/// falls back to the full walk at any problem): both must give the same report.
fn check(files: &[Vec<String>]) -> ChainReport {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..files.len())
        .map(|i| dir.path().join(format!("f{i}")))
        .collect();
    let inputs = files
        .iter()
        .zip(&paths)
        .map(|(lines, p)| {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(p, &text).unwrap();
            (
                p.display().to_string(),
                std::io::Cursor::new(text.into_bytes()),
            )
        })
        .collect();
    let full = verifier().verify_readers(inputs).unwrap();
    assert_eq!(verifier().verify_files(&paths).unwrap(), full);
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let fast = fast::verify(&verifier(), &refs);
    assert_eq!(
        fast.is_some(),
        full.ok(),
        "fast path taken exactly when whole"
    );
    // Report names as before: the file's base name.
    let mut full = full;
    let base = |f: &mut String| *f = f.rsplit('/').next().unwrap_or_default().to_string();
    full.problems.iter_mut().for_each(|p| base(&mut p.file));
    if let Some(c) = full.last_checkpoint.as_mut() {
        base(&mut c.file);
    }
    full
}

fn kinds(r: &ChainReport) -> Vec<(ProblemKind, String, u64)> {
    r.problems
        .iter()
        .map(|p| (p.kind, format!("{}:{}", p.file, p.line), p.seq))
        .collect()
}

#[test]
fn intact_log_over_two_files_verifies() {
    let lines = log(10);
    let (a, b) = lines.split_at(5);
    let r = check(&[a.to_vec(), b.to_vec()]);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.records, 13);
    assert_eq!(r.checkpoints_verified, 3);
    assert_eq!(r.unsigned_tail, 0);
    assert_eq!(r.last_checkpoint.unwrap().covers, 12);
}

#[test]
fn edited_record_is_named() {
    let mut lines = log(10);
    lines[2] = lines[2].replace("m3", "m9");
    assert_eq!(
        kinds(&check(&[lines])),
        [(ProblemKind::Edited, "f0:3".into(), 3)]
    );
}

#[test]
fn edited_and_rehashed_record_is_named_and_breaks_the_signature() {
    let mut lines = log(10);
    let mut rec: AuditRecord = serde_json::from_str(&lines[1]).unwrap();
    rec.principal = "mallory".into();
    rec.hash = rec.body_hash();
    lines[1] = rec.to_line();
    let r = check(&[lines]);
    assert_eq!(r.problems[0].kind, ProblemKind::Edited);
    assert_eq!((r.problems[0].line, r.problems[0].seq), (2, 2));
}

#[test]
fn deleted_record_is_named() {
    let mut lines = log(10);
    lines.remove(6);
    let k = kinds(&check(&[lines]));
    assert_eq!(k, [(ProblemKind::Deleted, "f0:7".into(), 8)]);
}

#[test]
fn swapped_records_are_named_as_reordered() {
    let mut lines = log(10);
    lines.swap(1, 2);
    let k = kinds(&check(&[lines]));
    assert_eq!(k, [(ProblemKind::Reordered, "f0:2".into(), 3)]);
}

#[test]
fn inserted_record_is_named() {
    let mut lines = log(10);
    let mut fake: AuditRecord = serde_json::from_str(&lines[2]).unwrap();
    fake.method = "forged".into();
    fake.hash = fake.body_hash();
    lines.insert(2, fake.to_line());
    let k = kinds(&check(&[lines]));
    assert_eq!(k, [(ProblemKind::Inserted, "f0:3".into(), 3)], "{k:?}");
}

#[test]
fn forged_checkpoint_signature_is_named() {
    let mut lines = log(4);
    let mut cp: AuditRecord = serde_json::from_str(&lines[4]).unwrap();
    let other = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
    let c = cp.checkpoint.as_mut().unwrap();
    let sig: Signature = other.sign(&Checkpoint::statement(c.seq, &c.hash));
    c.signature = base64::engine::general_purpose::STANDARD.encode(sig.to_der());
    cp.hash = cp.body_hash();
    lines[4] = cp.to_line();
    let k = kinds(&check(&[lines]));
    assert_eq!(k, [(ProblemKind::BadSignature, "f0:5".into(), 5)]);
}

#[test]
fn truncated_tail_and_torn_line_are_named() {
    let mut lines = log(10);
    lines.truncate(lines.len() - 2);
    let k = kinds(&check(&[lines.clone()]));
    assert_eq!(k, [(ProblemKind::TruncatedTail, "f0:11".into(), 11)]);
    let r = Verifier::default()
        .verify_readers(vec![(
            "f".to_string(),
            std::io::Cursor::new(format!("{}\n{}", lines[0], &lines[1][..9]).into_bytes()),
        )])
        .unwrap();
    assert_eq!(kinds(&r), [(ProblemKind::TornLine, "f:2".into(), 2)]);
    assert!(!r.signatures_checked);
}

#[test]
fn missing_first_file_is_named() {
    let lines = log(10);
    let k = kinds(&check(&[lines[5..].to_vec()]));
    assert_eq!(k, [(ProblemKind::MissingStart, "f0:1".into(), 6)]);
}

#[test]
fn ranges_are_compact() {
    assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1..3, 7, 9..10");
}

#[test]
fn gaps_are_the_numbers_not_present_without_walking_the_gap() {
    assert_eq!(super::gaps(1, 10, &[3, 4, 7]), "1..2, 5..6, 8..9");
    assert_eq!(super::gaps(5, 6, &[]), "5");
    assert_eq!(super::gaps(5, 8, &[5, 6, 7]), "");
    // An edited number opens a gap of almost 2^64: answered at once.
    assert_eq!(
        super::gaps(2, u64::MAX, &[9]),
        format!("2..8, 10..{}", u64::MAX - 1)
    );
}
