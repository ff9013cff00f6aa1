//! The audit record: what one call leaves in the log, and how records are chained.
//!
//! A record's line is its JSON serialization (fields in a fixed order). Its last field,
//! `hash`, is the hex SHA-256 of the same line without that field (the "body"), so an
//! edited record fails its own check; each record also carries the `hash` of the record
//! before it in `prev_hash`, so a removed, inserted or moved record breaks the chain.
//! Records hold the SHA-256 of a call's input, never the input itself.
//!
//! A checkpoint record (method [`CHECKPOINT_METHOD`]) carries a [`Checkpoint`]: the
//! sequence number and hash of the record before it, signed with the audit key (ECDSA
//! P-256 with SHA-256, DER signature) over the bytes of [`Checkpoint::statement`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Method of checkpoint records.
pub const CHECKPOINT_METHOD: &str = "hsmd/AuditCheckpoint";
/// Method of the record that reports a torn last line moved aside at start-up.
pub const TORN_LINE_METHOD: &str = "hsmd/TornLineRemoved";
/// Method of the record that closes an audit storage outage (writes failed, calls were
/// refused): the first record written once storage works again.
pub const OUTAGE_METHOD: &str = "hsmd/AuditStorageRecovered";

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Invalid,
    Failed,
    Throttled,
}

impl Outcome {
    /// Lower-case name as written in the log.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
            Outcome::Throttled => "throttled",
        }
    }
}

/// A signed statement that the chain up to record `seq` ends with `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the last record covered (the record before the checkpoint).
    pub seq: u64,
    /// `hash` of that record.
    pub hash: String,
    /// Base64 DER ECDSA P-256 signature over [`Checkpoint::statement`] with SHA-256.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes the audit key signs for a checkpoint of (`seq`, `hash`).
    pub fn statement(seq: u64, hash: &str) -> Vec<u8> {
        format!("hsmd-audit-checkpoint/v1\nseq={seq}\nhash={hash}\n").into_bytes()
    }
}

/// A call's audit facts, before the writer numbers and chains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    pub request_id: String,
    pub principal: String,
    pub peer: String,
    pub method: String,
    pub key_id: String,
    pub alias: String,
    pub algorithm: String,
    pub message_type: String,
    pub input_sha256: String,
    pub outcome: Option<Outcome>,
    pub status: String,
    pub reason: String,
    pub duration_us: u64,
    /// Free text of records hsmd writes about itself (torn line moved aside...).
    pub note: String,
    pub checkpoint: Option<Checkpoint>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    /// The replica that wrote it: only in a cluster (PostgreSQL store), so a single
    /// node's records are as they always were.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub request_id: String,
    pub principal: String,
    pub peer: String,
    pub method: String,
    pub key_id: String,
    pub alias: String,
    pub algorithm: String,
    pub message_type: String,
    pub input_sha256: String,
    pub outcome: Outcome,
    pub status: String,
    pub reason: String,
    pub duration_us: u64,
    /// Only on records hsmd writes about itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Only on checkpoint records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    pub prev_hash: String,
    /// SHA-256 of the body (this line without `hash`); empty while the body is built.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl AuditRecord {
    /// Numbers and chains an event.
    pub fn new(ev: AuditEvent, seq: u64, time: String, prev_hash: String) -> Self {
        let mut r = Self::new_unsealed(ev, seq, time, prev_hash);
        r.seal();
        r
    }

    fn new_unsealed(ev: AuditEvent, seq: u64, time: String, prev_hash: String) -> Self {
        AuditRecord {
            seq,
            node: String::new(),
            time,
            request_id: ev.request_id,
            principal: ev.principal,
            peer: ev.peer,
            method: ev.method,
            key_id: ev.key_id,
            alias: ev.alias,
            algorithm: ev.algorithm,
            message_type: ev.message_type,
            input_sha256: ev.input_sha256,
            outcome: ev.outcome.unwrap_or(Outcome::Failed),
            status: ev.status,
            reason: ev.reason,
            duration_us: ev.duration_us,
            note: ev.note,
            checkpoint: ev.checkpoint,
            prev_hash,
            hash: String::new(),
        }
    }

    /// Numbers and chains an event written by replica `node` (empty: a single node),
    /// and gives its line too (no newline), from one serialization (see [`seal`]).
    ///
    /// [`seal`]: AuditRecord::seal
    pub fn with_line(
        ev: AuditEvent,
        seq: u64,
        time: String,
        prev_hash: String,
        node: &str,
    ) -> (Self, String) {
        let mut r = AuditRecord::new_unsealed(ev, seq, time, prev_hash);
        r.node = node.to_string();
        let line = r.seal();
        (r, line)
    }

    /// Sets `hash` from the body and returns the line. The body is serialized once:
    /// `hash` is the line's last member, so the line is the body with that member put
    /// before its closing brace.
    fn seal(&mut self) -> String {
        self.hash = String::new();
        let mut line = serde_json::to_string(&*self).expect("audit record serializes");
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        line.pop(); // the body's closing brace
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}");
        self.hash = hash;
        line
    }

    /// Whether `line` (no newline) is this record's own line with its hash intact: the
    /// record serializes to exactly these bytes, and `hash` is the SHA-256 of the body.
    /// One serialization: the body is the line with its last member, `hash`, cut off.
    pub fn is_intact_line(&self, line: &[u8]) -> bool {
        let mine = self.to_line();
        if mine.as_bytes() != line {
            return false;
        }
        // A hash that is not plain hex would be escaped in the line; no body has one.
        let member = format!(",\"hash\":\"{}\"}}", self.hash);
        let Some(body) = mine.strip_suffix(&member) else {
            return false;
        };
        let digest = Sha256::new_with_prefix(body).chain_update(b"}").finalize();
        hex::encode(digest) == self.hash
    }

    /// Hex SHA-256 of the record serialized without its `hash` field.
    pub fn body_hash(&self) -> String {
        let body = AuditRecord {
            hash: String::new(),
            ..self.clone()
        };
        let json = serde_json::to_string(&body).expect("audit record serializes");
        hex::encode(Sha256::digest(json.as_bytes()))
    }

    /// The record's line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("audit record serializes")
    }

    /// True for checkpoint records.
    pub fn is_checkpoint(&self) -> bool {
        self.method == CHECKPOINT_METHOD
    }
}

/// Hex SHA-256 of a call's input, for the `input_sha256` field.
pub fn input_hash(input: &[u8]) -> String {
    hex::encode(Sha256::digest(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trips_and_has_no_payload_fields() {
        let ev = AuditEvent {
            method: "/hsmd.v1.KeyService/Sign".into(),
            input_sha256: input_hash(b"secret message"),
            outcome: Some(Outcome::Ok),
            ..Default::default()
        };
        let r = AuditRecord::new(
            ev,
            1,
            "2025-01-01T00:00:00.000000Z".into(),
            GENESIS_HASH.into(),
        );
        let line = r.to_line();
        assert!(!line.contains("secret message"));
        assert!(!line.contains("checkpoint") && !line.contains("note"));
        assert!(line.starts_with("{\"seq\":1,\"time\":"));
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.body_hash(), back.hash);
        assert!(line.ends_with(&format!(",\"hash\":\"{}\"}}", r.hash)));
    }

    #[test]
    fn checkpoint_fields_sit_before_prev_hash() {
        let ev = AuditEvent {
            method: CHECKPOINT_METHOD.into(),
            outcome: Some(Outcome::Ok),
            checkpoint: Some(Checkpoint {
                seq: 4,
                hash: "ab".into(),
                signature: "c2ln".into(),
            }),
            ..Default::default()
        };
        let r = AuditRecord::new(ev, 5, "t".into(), "ab".into());
        let line = r.to_line();
        assert!(line.contains(
            "\"checkpoint\":{\"seq\":4,\"hash\":\"ab\",\"signature\":\"c2ln\"},\"prev_hash\":\"ab\""
        ));
        assert_eq!(
            Checkpoint::statement(4, "ab"),
            b"hsmd-audit-checkpoint/v1\nseq=4\nhash=ab\n"
        );
    }
}
