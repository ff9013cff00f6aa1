//! Property tests of what reads audit files an attacker may have edited: the in-place
//! line reader and the record parser never panic, and every record hsmd writes, with
//! any text in its fields, reads back whole with its hash intact.

use proptest::prelude::*;

use crate::line::LineView;
use crate::record::{AuditEvent, AuditRecord, GENESIS_HASH, Outcome};
use crate::syslog::Target;

fn event(principal: String, method: String, note: String, reason: String) -> AuditEvent {
    AuditEvent {
        request_id: "00000000-0000-4000-8000-000000000000".into(),
        principal,
        method,
        outcome: Some(Outcome::Ok),
        status: "OK".into(),
        reason,
        note,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn line_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = LineView::parse(&bytes);
        let _ = serde_json::from_slice::<AuditRecord>(&bytes);
    }

    #[test]
    fn records_read_back_whole(
        principal in "\\PC{0,40}",
        method in "\\PC{0,40}",
        note in "\\PC{0,60}",
        reason in "[A-Z_\"\\\\]{0,20}",
        node in "(\\PC{1,12})?",
        seq in 1u64..u64::MAX / 2,
    ) {
        let (rec, line) = AuditRecord::with_line(
            event(principal.clone(), method.clone(), note, reason),
            seq,
            "2026-12-06T00:00:00.000000Z".into(),
            GENESIS_HASH.into(),
            &node,
        );
        // The writer's one-serialization line is the record's plain serialization.
        prop_assert_eq!(&line, &rec.to_line());
        prop_assert_eq!(&rec.hash, &rec.body_hash());
        prop_assert!(rec.is_intact_line(line.as_bytes()));
        let back: AuditRecord = serde_json::from_str(&line).expect("a line hsmd wrote");
        prop_assert_eq!(&back, &rec);
        let view = LineView::parse(line.as_bytes());
        prop_assert!(view.is_some(), "the fast reader refuses a line hsmd wrote: {}", line);
        let view = view.expect("checked");
        prop_assert_eq!(view.seq, seq);
        prop_assert!(view.hash_ok(), "hash mismatch on a line hsmd wrote: {}", line);
    }

    #[test]
    fn edited_lines_never_pass_the_hash_check(
        note in "[a-z ]{1,30}",
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let rec = AuditRecord::new(
            event("p".into(), "m".into(), note, String::new()),
            7,
            "2026-12-06T00:00:00.000000Z".into(),
            GENESIS_HASH.into(),
        );
        let mut line = rec.to_line().into_bytes();
        let i = at.index(line.len());
        prop_assume!(line[i] != byte);
        line[i] = byte;
        if let Ok(back) = serde_json::from_slice::<AuditRecord>(&line) {
            prop_assert!(!back.is_intact_line(&line), "an edited line passed: {}", String::from_utf8_lossy(&line));
        }
        if let Some(view) = LineView::parse(&line) {
            prop_assert!(!view.hash_ok(), "an edited line kept a good hash: {}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn syslog_target_parse_never_panics(s in "\\PC{0,60}") {
        let _ = Target::parse(&s);
    }
}
