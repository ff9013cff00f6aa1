//! Reading the audit log file directly (JSON lines) and checking its hash chain without
//! hsmd's help, so the tests do not trust the code they test.

use std::fs;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Instance;

/// One line of the audit log.
#[derive(Debug, Clone)]
pub struct AuditLine {
    /// The exact bytes of the line, without the newline.
    pub raw: String,
    pub json: Value,
}

impl AuditLine {
    /// A string field, or "" when absent or null.
    pub fn str(&self, field: &str) -> &str {
        self.json.get(field).and_then(Value::as_str).unwrap_or("")
    }

    /// The record's sequence number; panics if it has none.
    pub fn seq(&self) -> u64 {
        self.json
            .get("seq")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("audit record without numeric seq: {}", self.raw))
    }

    /// The record's body: its line as written without the final `,"hash":"..."` field.
    pub fn body(&self) -> &str {
        match self.raw.rfind(",\"hash\":\"") {
            Some(i) if self.raw.ends_with("\"}") => &self.raw[..i],
            _ => &self.raw,
        }
    }

    /// Hex SHA-256 of the body followed by the closing brace: what the record's own
    /// `hash` field must say (README "Audit log").
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(format!("{}}}", self.body()).as_bytes()))
    }
}

/// Parses audit log text; panics on a line that is not a JSON object.
pub fn parse_lines(text: &str) -> Vec<AuditLine> {
    text.lines()
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            let json: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line {} is not JSON ({e}): {line}", i + 1));
            assert!(
                json.is_object(),
                "audit line {} is not an object: {line}",
                i + 1
            );
            AuditLine {
                raw: line.to_owned(),
                json,
            }
        })
        .collect()
}

impl Instance {
    /// The raw text of `DIR/audit/audit.log`.
    pub fn audit_text(&self) -> String {
        let path = self.audit_log_path();
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The request id of every record in every file of the audit log (rotated files
    /// too), read line by line so that a long log costs only its ids.
    pub fn audit_request_ids(&self) -> std::collections::HashSet<String> {
        use std::io::BufRead;
        let files =
            audit_chain::files::log_files(&self.audit_log_path()).expect("list audit files");
        let mut ids = std::collections::HashSet::new();
        for f in files {
            let r = std::io::BufReader::new(fs::File::open(&f).expect("open audit file"));
            for line in r.lines() {
                let line = line.expect("read audit file");
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(id) = v.get("request_id").and_then(Value::as_str)
                {
                    ids.insert(id.to_string());
                }
            }
        }
        ids
    }

    /// Every record of the audit log (its current file), in file order.
    pub fn audit_lines(&self) -> Vec<AuditLine> {
        parse_lines(&self.audit_text())
    }

    /// Like [`Instance::audit_lines`], but an absent log file counts as empty.
    pub fn audit_lines_if_any(&self) -> Vec<AuditLine> {
        if self.audit_log_path().exists() {
            self.audit_lines()
        } else {
            Vec::new()
        }
    }

    /// The record written for `request_id`; panics if there is none or more than one.
    pub fn audit_record(&self, request_id: &str) -> AuditLine {
        let lines = self.audit_lines();
        let found: Vec<&AuditLine> = lines
            .iter()
            .filter(|l| l.str("request_id") == request_id)
            .collect();
        assert!(
            found.len() == 1,
            "expected exactly one audit record with request_id {request_id}, found {}; log:\n{}",
            found.len(),
            lines
                .iter()
                .map(|l| l.raw.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        found[0].clone()
    }

    /// Asserts that the call with `request_id` was audited with these values; returns
    /// the record. `reason` "" means no reason (a success).
    pub fn assert_audited(
        &self,
        request_id: &str,
        method: &str,
        outcome: &str,
        status: &str,
        reason: &str,
    ) -> AuditLine {
        let rec = self.audit_record(request_id);
        let expected = [
            ("method", method),
            ("outcome", outcome),
            ("status", status),
            ("reason", reason),
        ];
        for (field, want) in expected {
            assert_eq!(
                rec.str(field),
                want,
                "audit field `{field}` of request {request_id}; record: {}",
                rec.raw
            );
        }
        rec
    }
}

/// Checks the chain the way an outside auditor would, from the documented format only:
/// each record's `hash` is the SHA-256 of its line without that field, sequence numbers
/// go up by one and each prev_hash is the `hash` of the record before. Returns the first
/// problem.
pub fn check_chain(lines: &[AuditLine]) -> Result<(), String> {
    for rec in lines {
        if rec.str("hash") != rec.hash() {
            return Err(format!(
                "record seq {} has hash {:?} but its body hashes to {}",
                rec.seq(),
                rec.str("hash"),
                rec.hash()
            ));
        }
    }
    for pair in lines.windows(2) {
        let (prev, rec) = (&pair[0], &pair[1]);
        if rec.seq() != prev.seq() + 1 {
            return Err(format!(
                "seq {} follows seq {} (expected {})",
                rec.seq(),
                prev.seq(),
                prev.seq() + 1
            ));
        }
        if rec.str("prev_hash") != prev.hash() {
            return Err(format!(
                "record seq {} has prev_hash {:?}, but the record before (seq {}) hashes to {}",
                rec.seq(),
                rec.str("prev_hash"),
                prev.seq(),
                prev.hash()
            ));
        }
    }
    Ok(())
}

/// The fields every audit record must carry (README "Audit log").
pub const REQUIRED_FIELDS: [&str; 17] = [
    "seq",
    "time",
    "request_id",
    "principal",
    "peer",
    "method",
    "key_id",
    "alias",
    "algorithm",
    "message_type",
    "input_sha256",
    "outcome",
    "status",
    "reason",
    "duration_us",
    "prev_hash",
    "hash",
];
