//! The in-place reader accepts exactly the lines `AuditRecord::to_line` writes.

use super::*;
use crate::record::{AuditEvent, AuditRecord, CHECKPOINT_METHOD, Checkpoint, GENESIS_HASH};

fn event(principal: &str, note: &str, checkpoint: bool) -> AuditEvent {
    AuditEvent {
        request_id: "r-1".into(),
        principal: principal.into(),
        peer: "10.0.0.1:4000".into(),
        method: if checkpoint {
            CHECKPOINT_METHOD.into()
        } else {
            "/hsmd.v1.KeyService/Sign".into()
        },
        key_id: "k".into(),
        alias: "alias/a".into(),
        outcome: Some(Outcome::Denied),
        duration_us: 1207,
        note: note.into(),
        checkpoint: checkpoint.then(|| Checkpoint {
            seq: 41,
            hash: "ab".repeat(32),
            signature: "c2ln+/=".into(),
        }),
        ..Default::default()
    }
}

fn record(principal: &str, note: &str, checkpoint: bool) -> AuditRecord {
    AuditRecord::new(
        event(principal, note, checkpoint),
        42,
        "2026-01-01T00:00:00.000001Z".into(),
        GENESIS_HASH.into(),
    )
}

#[test]
fn reads_every_kind_of_written_line() {
    for r in [
        record("spiffe://corp/pay", "", false),
        record("ünï \"q\" \\ \n\t\u{1}\u{7f}\u{2028}/", "a note", false),
        record("hsmd", "", true),
        // A replica's record (PostgreSQL store) names its node after `seq`.
        AuditRecord::with_line(
            event("spiffe://corp/pay", "", false),
            42,
            "2026-01-01T00:00:00.000001Z".into(),
            GENESIS_HASH.into(),
            "replica-b",
        )
        .0,
    ] {
        let line = r.to_line();
        let v = LineView::parse(line.as_bytes()).unwrap_or_else(|| panic!("refused {line}"));
        assert_eq!(v.seq, 42);
        assert_eq!(v.principal, &escaped(&r.principal)[..]);
        assert_eq!(v.method, r.method.as_bytes());
        assert_eq!(v.outcome, Outcome::Denied);
        assert_eq!(v.hash, r.hash.as_bytes());
        assert_eq!(v.prev_hash, GENESIS_HASH.as_bytes());
        assert!(v.hash_ok(), "{line}");
        assert_eq!(
            v.checkpoint.map(|c| c.seq),
            r.checkpoint.as_ref().map(|c| c.seq)
        );
    }
}

#[test]
fn refuses_lines_hsmd_does_not_write() {
    let line = record("p\u{1}", "n", true).to_line();
    let edits: Vec<String> = vec![
        line.replacen("\"seq\":42", "\"seq\": 42", 1),
        line.replacen("\"seq\":42", "\"seq\":042", 1),
        line.replacen("\\u0001", "\\u0041", 1),
        line.replacen("\\u0001", "\\u0009", 1),
        line.replacen("\\u0001", "\\U0001", 1),
        line.replacen("\"note\":\"n\"", "\"note\":\"\"", 1),
        line.replacen("\"seq\":42", "\"seq\":42,\"node\":\"\"", 1),
        line.replacen(",\"peer\"", ", \"peer\"", 1),
        line.replacen("\"denied\"", "\"Denied\"", 1),
        line.replacen("hsmd/Audit", "hsmd\\/Audit", 1),
        format!("{line} "),
        line[..line.find(",\"hash\":").unwrap()].to_string() + "}",
    ];
    for e in edits {
        assert_ne!(e, line);
        assert!(LineView::parse(e.as_bytes()).is_none(), "accepted {e}");
    }
    // An edited value is read, but its own hash no longer matches.
    let edited = line.replacen("\"key_id\":\"k\"", "\"key_id\":\"x\"", 1);
    assert!(!LineView::parse(edited.as_bytes()).unwrap().hash_ok());
}

#[test]
fn escaped_matches_the_written_form() {
    assert_eq!(escaped("a\"b\\c\n\u{1}é"), b"a\\\"b\\\\c\\n\\u0001\xc3\xa9");
}
