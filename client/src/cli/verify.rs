//! `hsmctl audit verify --public-key audit.pem FILES...`: the offline verifier. Reads
//! the log files (rotated ones and the current one, in any order, or their folder),
//! checks every record's hash, the chain across files and each checkpoint's signature,
//! and prints every problem with its kind, file, line and sequence number. Needs no
//! daemon and no connection.

use std::path::PathBuf;

use audit_chain::{ChainReport, Verifier, files};
use clap::Args;
use serde_json::json;

use super::args::{print_json, println};
use super::{CliError, Output, Verdict};

/// Arguments of `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit public key (PEM, from `hsmctl audit public-key`): checkpoint signatures
    /// are checked with it. Offline verification only.
    #[arg(long, value_name = "PEM")]
    public_key: Option<PathBuf>,
    /// Fail unless the log ends with a checkpoint, as a cleanly stopped hsmd leaves it
    /// (so a cut tail is found). Offline verification only.
    #[arg(long)]
    sealed: bool,
    /// Log files or folders to verify offline (e.g. /var/lib/hsmd/audit); without
    /// them, the server verifies its own log.
    #[arg(value_name = "FILES")]
    files: Vec<PathBuf>,
}

impl VerifyArgs {
    /// True when this runs without the daemon.
    pub fn offline(&self) -> bool {
        !self.files.is_empty() || self.public_key.is_some() || self.sealed
    }

    /// Verifies the files.
    pub fn run_offline(&self, output: Output) -> Result<Verdict, CliError> {
        if self.files.is_empty() {
            return Err(CliError::usage(
                "name the audit log files or their folder to verify offline",
            ));
        }
        let verifier = match &self.public_key {
            Some(p) => {
                let pem = std::fs::read_to_string(p).map_err(|e| {
                    CliError::io("cannot read public key", &p.display().to_string(), e)
                })?;
                Verifier::from_pem(&pem)
                    .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))?
            }
            None => Verifier::default(),
        }
        .sealed(self.sealed);
        let io = |e: std::io::Error| CliError::io("cannot read", "audit log", e);
        let paths = files::expand(&self.files).map_err(io)?;
        if paths.is_empty() {
            return Err(CliError::usage("no audit log files found there"));
        }
        let report = verifier.verify_files(&paths).map_err(io)?;
        if output == Output::Json {
            print_json(&report_json(&report))?;
        } else {
            for line in report_lines(&report) {
                println(line)?;
            }
        }
        Ok(if report.ok() {
            Verdict::Yes
        } else {
            Verdict::No
        })
    }
}

/// The report for people: one summary line, then one line per problem.
fn report_lines(r: &ChainReport) -> Vec<String> {
    let mut lines = Vec::new();
    let checkpoint = match &r.last_checkpoint {
        Some(c) => format!(
            "last checkpoint record {} at {}:{} covers records 1..{}; {} record(s) after it not yet signed",
            c.record_seq, c.file, c.line, c.covers, r.unsigned_tail
        ),
        None => "no checkpoint".into(),
    };
    let signatures = if r.signatures_checked {
        format!(
            "{} checkpoint signature(s) verified",
            r.checkpoints_verified
        )
    } else {
        "checkpoint signatures NOT checked (no --public-key)".into()
    };
    let head = format!(
        "{} records in {} file(s), head record {} ({})",
        r.records, r.files, r.head.sequence, r.head.hash
    );
    if r.ok() {
        lines.push(format!("ok: {head}; {signatures}; {checkpoint}"));
    } else {
        lines.push(format!(
            "BROKEN: {} problem(s); {head}; {signatures}; {checkpoint}",
            r.problems.len()
        ));
        lines.extend(r.problems.iter().map(|p| p.to_string()));
    }
    lines
}

fn report_json(r: &ChainReport) -> serde_json::Value {
    json!({
        "ok": r.ok(),
        "files": r.files,
        "records": r.records,
        "head_sequence": r.head.sequence,
        "head_hash": r.head.hash,
        "signatures_checked": r.signatures_checked,
        "checkpoints_verified": r.checkpoints_verified,
        "last_checkpoint": r.last_checkpoint.as_ref().map(|c| json!({
            "record_sequence": c.record_seq, "covers": c.covers, "file": c.file, "line": c.line,
        })),
        "unsigned_records": r.unsigned_tail,
        "problems": r.problems.iter().map(|p| json!({
            "kind": p.kind.name(), "file": p.file, "line": p.line, "sequence": p.seq,
            "detail": p.detail,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_chain::{Problem, ProblemKind};

    #[test]
    fn lines_name_kind_file_line_and_seq() {
        let mut r = ChainReport {
            files: 2,
            records: 10,
            ..Default::default()
        };
        assert!(report_lines(&r)[0].starts_with("ok: 10 records in 2 file(s)"));
        r.problems.push(Problem {
            kind: ProblemKind::Deleted,
            file: "audit.log".into(),
            line: 4,
            seq: 7,
            detail: "record(s) 5..6 missing".into(),
        });
        let lines = report_lines(&r);
        assert!(lines[0].starts_with("BROKEN: 1 problem(s)"));
        assert_eq!(
            lines[1],
            "deleted: audit.log:4 (seq 7): record(s) 5..6 missing"
        );
        assert_eq!(report_json(&r)["problems"][0]["kind"], "deleted");
    }
}
