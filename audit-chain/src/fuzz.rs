//! The fuzz targets of the audit log's readers (the offline verifier reads files an
//! attacker may have edited), and what the fuzz targets of every crate share: the
//! [`Target`] type and [`replay`], which runs each seed and saved crash through its
//! target in the crates' unit tests. `fuzz/` runs the targets under AFL++
//! (`scripts/fuzz TARGET MINUTES`).
//!
//! Not an API: public only so that the `fuzz/` crate and the other crates reach it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::line::LineView;
use crate::{AuditRecord, ChainHead, Verifier};

/// A fuzz target: its name (the directory of its seeds) and its function, which takes
/// any bytes and must answer without panicking or hanging.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target of this crate.
pub const TARGETS: &[Target] = &[
    Target {
        name: "audit_line",
        run: audit_line,
    },
    Target {
        name: "audit_log",
        run: audit_log,
    },
];

/// One audit log line: the fast view and the full record must agree on what they read.
fn audit_line(data: &[u8]) {
    let view = LineView::parse(data);
    if let (Some(v), Ok(r)) = (view, serde_json::from_slice::<AuditRecord>(data)) {
        assert_eq!(
            v.seq, r.seq,
            "the line view and the record read the same sequence"
        );
    }
}

/// A whole audit log: the streamed verifier (`verify_files`, which takes the fast path
/// when the log is whole) and the full walk must agree on whether it is intact.
fn audit_log(data: &[u8]) {
    let path = scratch_file();
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("write the scratch log");
    let v = Verifier::default();
    let streamed = v.verify_files(&[&path]).expect("verify the scratch log");
    let walked = v
        .verify_readers(vec![("log".to_string(), data)])
        .expect("walk the log");
    assert_eq!(streamed.ok(), walked.ok(), "{streamed:?}\n{walked:?}");
    let _ = crate::walk::walk_reader(data, ChainHead::default());
}

/// A file of this process's own for `audit_log`, reused by every run.
fn scratch_file() -> PathBuf {
    std::env::temp_dir().join(format!("hsmctl-fuzz-audit-{}.log", std::process::id()))
}

/// Runs each file of `ROOT/seeds/NAME/` and `ROOT/regressions/NAME/` through target
/// NAME and says how many ran; panics if a target has no seed.
pub fn replay(root: &Path, targets: &[Target]) -> usize {
    let mut n = 0;
    for t in targets {
        let mut seeds = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(t.name)) else {
                continue;
            };
            for e in entries {
                let path = e.expect("dir entry").path();
                (t.run)(&std::fs::read(&path).expect("read input"));
                seeds += 1;
            }
        }
        assert!(
            seeds > 0,
            "target {} has no seeds under {}",
            t.name,
            root.display()
        );
        n += seeds;
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_and_regressions_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        assert!(super::replay(&root, super::TARGETS) >= 2);
        let _ = std::fs::remove_file(super::scratch_file());
    }
}
