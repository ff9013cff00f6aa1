//! The offline query returns what the server's filters return, across files and blocks.

use super::*;
use crate::record::{AuditEvent, GENESIS_HASH};

fn lines(n: u64) -> Vec<String> {
    let mut prev = GENESIS_HASH.to_string();
    (1..=n)
        .map(|seq| {
            let ev = AuditEvent {
                principal: format!("spiffe://corp/p{}", seq % 3),
                method: "/hsmd.v1.KeyService/Sign".into(),
                key_id: format!("k{}", seq % 5),
                outcome: Some(if seq.is_multiple_of(7) {
                    Outcome::Denied
                } else {
                    Outcome::Ok
                }),
                ..Default::default()
            };
            let r = AuditRecord::new(
                ev,
                seq,
                format!("2026-01-01T00:00:{:02}.000000Z", seq % 60),
                prev.clone(),
            );
            prev = r.hash.clone();
            r.to_line()
        })
        .collect()
}

fn run(files: &[&[String]], f: &Filter) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, ls)| {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
            p
        })
        .collect();
    let mut out = Vec::new();
    let n = query_files(&paths, f, &mut out).unwrap();
    let got: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(n as usize, got.len());
    got
}

fn expected(all: &[String], f: &Filter) -> Vec<String> {
    all.iter()
        .filter(|l| f.matches(&serde_json::from_str(l).unwrap()))
        .cloned()
        .collect()
}

#[test]
fn filters_match_the_records_filters() {
    let all = lines(5000); // > 1 MiB: several blocks
    let filters = [
        Filter {
            principal: Some("spiffe://corp/p1".into()),
            since: Some("2026-01-01T00:00:30".into()),
            ..Default::default()
        },
        Filter {
            key: Some("k3".into()),
            method: Some("Sign".into()),
            ..Default::default()
        },
        Filter {
            outcome: Some(Outcome::Denied),
            until: Some("2026-01-01T00:00:10".into()),
            ..Default::default()
        },
        Filter {
            principal: Some("nobody".into()),
            ..Default::default()
        },
    ];
    for f in &filters {
        let want = expected(&all, f);
        assert_eq!(run(&[&all[..2000], &all[2000..]], f), want, "{f:?}");
    }
    let limited = Filter {
        limit: Some(3),
        ..filters[0].clone()
    };
    assert_eq!(
        run(&[&all], &limited),
        expected(&all, &filters[0])[..3].to_vec()
    );
}

#[test]
fn reads_lines_hsmd_did_not_write_as_the_server_does() {
    let mut all = lines(3);
    all[1] = all[1].replacen("\"seq\":2", "\"seq\": 2", 1); // valid JSON, not canonical
    all.push("not a record".into());
    let f = Filter {
        key: Some("k2".into()),
        ..Default::default()
    };
    assert_eq!(run(&[&all], &f), vec![all[1].clone()]);
}
