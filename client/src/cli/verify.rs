//! `hsmctl audit verify --public-key audit.pem FILES...`: the offline verifier. Reads
//! the log files (rotated ones and the current one, in any order, or their folder),
//! checks every record's hash, the chain across files and each checkpoint's signature,
//! and prints every problem with its kind, file, line and sequence number. Needs no
//! daemon and no connection. A cluster's audit folder (`DIR/audit/NODE/` per replica)
//! holds one chain per replica: each is verified on its own, one line per node.

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
    /// Log files or folders to verify offline (e.g. /var/lib/hsmd/audit, or a
    /// cluster's audit folder with one sub-folder per replica: one chain each); without
    /// them, each replica of the profile verifies its own log.
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
        let chains = files::chains(&self.files).map_err(io)?;
        if chains.iter().all(|(_, files)| files.is_empty()) {
            return Err(CliError::usage("no audit log files found there"));
        }
        let mut reports = Vec::with_capacity(chains.len());
        for (node, paths) in &chains {
            reports.push((node.as_str(), verifier.verify_files(paths).map_err(io)?));
        }
        let all_ok = reports.iter().all(|(_, r)| r.ok());
        match (output, reports.as_slice()) {
            (Output::Json, [(_, one)]) => print_json(&report_json(one))?,
            (Output::Json, many) => print_json(&json!({
                "ok": all_ok,
                "nodes": many.iter().map(|(node, r)| {
                    let mut j = report_json(r);
                    j["node"] = json!(node);
                    j
                }).collect::<Vec<_>>(),
            }))?,
            (_, [(_, one)]) => {
                for line in report_lines(one) {
                    println(line)?;
                }
            }
            (_, many) => {
                for (node, r) in many {
                    for line in node_lines(node, r) {
                        println(line)?;
                    }
                }
            }
        }
        Ok(if all_ok { Verdict::Yes } else { Verdict::No })
    }
}

/// A node's report in a cluster's: its summary line names the node after the verdict
/// (`ok: node a: ...`), its problems follow, indented.
fn node_lines(node: &str, r: &ChainReport) -> Vec<String> {
    let mut lines = report_lines(r);
    if let Some(first) = lines.first_mut() {
        let (verdict, rest) = first.split_once(": ").unwrap_or((first.as_str(), ""));
        *first = format!("{verdict}: node {node}: {rest}");
    }
    for l in lines.iter_mut().skip(1) {
        l.insert_str(0, "  ");
    }
    lines
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
        let node = node_lines("b", &r);
        assert!(
            node[0].starts_with("BROKEN: node b: 1 problem(s)"),
            "{}",
            node[0]
        );
        assert!(node[1].starts_with("  deleted: audit.log:4"));
        r.problems.clear();
        assert!(node_lines("a", &r)[0].starts_with("ok: node a: 10 records"));
    }

    #[test]
    fn a_cluster_folder_is_one_chain_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        for node in ["b", "a"] {
            std::fs::create_dir_all(audit.join(node)).unwrap();
            std::fs::write(audit.join(node).join("audit.log"), "").unwrap();
        }
        std::fs::create_dir_all(audit.join("empty")).unwrap();
        let chains = files::chains(std::slice::from_ref(&audit)).unwrap();
        let names: Vec<&str> = chains.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(chains[0].1, vec![audit.join("a/audit.log")]);
        // A folder of log files is one chain; files named one by one, one unnamed.
        let one = files::chains(&[audit.join("a")]).unwrap();
        assert_eq!(one.len(), 1);
        let loose = files::chains(&[audit.join("a/audit.log"), audit.join("b/audit.log")]).unwrap();
        assert_eq!(
            (loose.len(), loose[0].0.as_str(), loose[0].1.len()),
            (1, "", 2)
        );
    }
}
