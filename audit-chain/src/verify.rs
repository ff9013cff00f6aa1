//! The offline verifier: walks every file of a log in chain order, checks each record's
//! own hash, the chain, and the signature of every checkpoint with the audit public key,
//! and names each problem with its kind, file, line and sequence number. It keeps going
//! after a problem, so one run shows everything that was done to the log.
//!
//! What it can tell apart:
//! - an **edited** record (its content no longer matches its `hash`; or, when the editor
//!   recomputed that hash, the next record no longer links to it);
//! - an **inserted** record (a second record claims a sequence number already used);
//! - **deleted** records (numbers jump, and the missing ones appear nowhere);
//! - **reordered** records (numbers jump, and the missing ones appear later);
//! - a checkpoint whose **signature** does not verify, or that does not match the chain;
//! - a **torn** last line (a crash mid-write) and unreadable lines;
//! - a log that does not start at record 1 (older files left out);
//! - with `sealed`, a **truncated tail**: records after the last checkpoint (a cleanly
//!   stopped hsmd always ends its log with one). Records after the last checkpoint are
//!   otherwise reported as not yet signed: cutting them cannot be proved from the files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use base64::Engine;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use crate::record::{AuditRecord, Checkpoint, GENESIS_HASH};
use crate::walk::{ChainHead, MAX_LINE};

mod fast;

/// Kind of a problem found in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    Edited,
    Inserted,
    Deleted,
    Reordered,
    BadSignature,
    CheckpointMismatch,
    TornLine,
    Unreadable,
    MissingStart,
    TruncatedTail,
}

impl ProblemKind {
    /// Lower-case name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::BadSignature => "bad-signature",
            ProblemKind::CheckpointMismatch => "checkpoint-mismatch",
            ProblemKind::TornLine => "torn-line",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::MissingStart => "missing-start",
            ProblemKind::TruncatedTail => "truncated-tail",
        }
    }
}

/// One problem, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub file: String,
    /// 1-based line in `file`.
    pub line: u64,
    /// Sequence number the record claims (or the one expected there).
    pub seq: u64,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}:{} (seq {}): {}",
            self.kind.name(),
            self.file,
            self.line,
            self.seq,
            self.detail
        )
    }
}

/// The last signed checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheckpoint {
    /// Sequence of the checkpoint record itself.
    pub record_seq: u64,
    /// Last record it covers.
    pub covers: u64,
    pub file: String,
    pub line: u64,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub files: usize,
    pub records: u64,
    /// Checkpoints whose signature was checked and is good.
    pub checkpoints_verified: u64,
    /// False when no public key was given (signatures not checked).
    pub signatures_checked: bool,
    pub head: ChainHead,
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Records after the last checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    pub problems: Vec<Problem>,
}

impl ChainReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Location and facts of one line.
struct Entry {
    file: usize,
    line: u64,
    body: Result<AuditRecord, String>,
    /// Own hash matches the content and the line is exactly its serialization.
    intact: bool,
    torn: bool,
}

/// Verifies logs, optionally with the audit public key.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    key: Option<VerifyingKey>,
    sealed: bool,
}

impl Verifier {
    /// A verifier that checks checkpoint signatures with `key`.
    pub fn with_key(key: VerifyingKey) -> Self {
        Verifier {
            key: Some(key),
            sealed: false,
        }
    }

    /// A verifier for a PEM SubjectPublicKeyInfo (`hsmctl audit public-key`'s output).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Verifier::with_key)
            .map_err(|e| format!("not an EC P-256 public key in PEM: {e}"))
    }

    /// Requires the log to end with a checkpoint (true of a cleanly stopped hsmd).
    pub fn sealed(mut self, sealed: bool) -> Self {
        self.sealed = sealed;
        self
    }

    /// Checks a checkpoint's signature.
    pub fn signature_ok(&self, cp: &Checkpoint) -> Option<bool> {
        let key = self.key.as_ref()?;
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&cp.signature) else {
            return Some(false);
        };
        let Ok(sig) = Signature::from_der(&der) else {
            return Some(false);
        };
        Some(
            key.verify(&Checkpoint::statement(cp.seq, &cp.hash), &sig)
                .is_ok(),
        )
    }

    /// Verifies files given in chain order (see [`crate::files::expand`]). A whole log
    /// is checked by the fast path (streamed, files in parallel, memory flat); a log with
    /// any problem is read again by the full walk, which names every problem.
    pub fn verify_files(&self, paths: &[impl AsRef<Path>]) -> std::io::Result<ChainReport> {
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_ref()).collect();
        if let Some(report) = fast::verify(self, &refs) {
            return Ok(report);
        }
        let mut inputs = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let f = std::fs::File::open(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            inputs.push((p.display().to_string(), BufReader::new(f)));
        }
        self.verify_readers(inputs)
    }

    /// Verifies named readers given in chain order.
    pub fn verify_readers<R: BufRead>(
        &self,
        inputs: Vec<(String, R)>,
    ) -> std::io::Result<ChainReport> {
        let mut names = Vec::new();
        let mut entries = Vec::new();
        for (i, (name, r)) in inputs.into_iter().enumerate() {
            names.push(name);
            read_entries(i, r, &mut entries)?;
        }
        let mut report = Walk::new(self, &names, &entries).run();
        report.files = names.len();
        Ok(report)
    }
}

fn read_entries(file: usize, mut r: impl BufRead, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let n = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let torn = buf.last() != Some(&b'\n');
        if torn && n as u64 == MAX_LINE {
            out.push(Entry {
                file,
                line,
                body: Err(format!("line longer than {MAX_LINE} bytes")),
                intact: false,
                torn: false,
            });
            // Skip the rest of the over-long line.
            loop {
                buf.clear();
                let m = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)?;
                if m == 0 || buf.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        if !torn {
            buf.pop();
        }
        let body = serde_json::from_slice::<AuditRecord>(&buf).map_err(|e| e.to_string());
        let intact = body.as_ref().is_ok_and(|r| r.is_intact_line(&buf));
        out.push(Entry {
            file,
            line,
            body,
            intact,
            torn,
        });
    }
}

/// State of one walk over the entries.
struct Walk<'a> {
    v: &'a Verifier,
    names: &'a [String],
    entries: &'a [Entry],
    report: ChainReport,
    /// Index of the last accepted record.
    prev: Option<usize>,
    /// Sequence numbers seen, with the entry that first claimed them.
    seen: HashMap<u64, usize>,
    /// Sequence numbers already reported as out of order.
    reordered: HashSet<u64>,
    /// Where each sequence number occurs.
    positions: BTreeMap<u64, Vec<usize>>,
}

impl<'a> Walk<'a> {
    fn new(v: &'a Verifier, names: &'a [String], entries: &'a [Entry]) -> Self {
        let mut positions: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Ok(r) = &e.body {
                positions.entry(r.seq).or_default().push(i);
            }
        }
        Walk {
            v,
            names,
            entries,
            report: ChainReport {
                signatures_checked: v.key.is_some(),
                ..Default::default()
            },
            prev: None,
            seen: HashMap::new(),
            reordered: HashSet::new(),
            positions,
        }
    }

    fn at(&self, i: usize) -> String {
        let e = &self.entries[i];
        format!("{}:{}", self.names[e.file], e.line)
    }

    fn problem(&mut self, kind: ProblemKind, i: usize, seq: u64, detail: String) {
        let e = &self.entries[i];
        self.report.problems.push(Problem {
            kind,
            file: self.names[e.file].clone(),
            line: e.line,
            seq,
            detail,
        });
    }

    fn run(mut self) -> ChainReport {
        let entries = self.entries;
        let last = entries.len().saturating_sub(1);
        for (i, e) in entries.iter().enumerate() {
            let expected = self.report.head.sequence + 1;
            if e.torn {
                let detail = if i == last {
                    "torn last line (no newline): hsmd stopped while writing it".to_string()
                } else {
                    "line without a newline in the middle of the log".to_string()
                };
                self.problem(ProblemKind::TornLine, i, expected, detail);
                continue;
            }
            let rec = match &e.body {
                Ok(r) => r,
                Err(err) => {
                    let d = format!("not a valid record: {err}");
                    self.problem(ProblemKind::Unreadable, i, expected, d);
                    continue;
                }
            };
            if !e.intact {
                let d = "content does not match its own hash: the record was edited".to_string();
                self.problem(ProblemKind::Edited, i, rec.seq, d);
            }
            self.place(i, rec, expected);
        }
        self.finish()
    }

    /// Fits record `i` into the chain.
    fn place(&mut self, i: usize, rec: &AuditRecord, expected: u64) {
        if rec.seq == expected {
            self.check_link(i, rec);
            self.accept(i, rec);
        } else if rec.seq > expected {
            self.jump(i, rec, expected);
            self.accept(i, rec);
        } else if self.reordered.contains(&rec.seq) {
            // Already reported where the order broke.
        } else if let Some(&first) = self.seen.get(&rec.seq) {
            self.duplicate(i, rec, first);
        } else {
            let d = format!(
                "record {} comes after record {}",
                rec.seq, self.report.head.sequence
            );
            self.problem(ProblemKind::Reordered, i, rec.seq, d);
        }
    }

    /// The record has the expected number: does it link to the one before?
    fn check_link(&mut self, i: usize, rec: &AuditRecord) {
        if rec.prev_hash == self.report.head.hash {
            return;
        }
        match self.prev {
            None => {
                let d = format!(
                    "first record's prev_hash is not {}: the log was cut at its start",
                    &GENESIS_HASH[..8]
                );
                self.problem(ProblemKind::MissingStart, i, rec.seq, d);
            }
            Some(p) => {
                let d = format!(
                    "record {} does not link to it: its hash was recomputed after an edit, \
                     or it replaced the original (next record at {})",
                    rec.seq,
                    self.at(i)
                );
                self.problem(ProblemKind::Edited, p, rec.seq - 1, d);
            }
        }
    }

    /// Numbers jump from `expected` to `rec.seq`.
    fn jump(&mut self, i: usize, rec: &AuditRecord, expected: u64) {
        if self.prev.is_none() {
            let d = format!(
                "log starts at record {}: records 1..{} are not in the files given",
                rec.seq,
                rec.seq - 1
            );
            self.problem(ProblemKind::MissingStart, i, rec.seq, d);
            return;
        }
        // Only numbers that are in the log can come later: look those up, never walk the
        // gap itself (an edited number can open a gap of 2^64).
        let later: Vec<u64> = self
            .positions
            .range(expected..rec.seq)
            .filter(|(_, ps)| ps.iter().any(|&p| p > i))
            .map(|(&s, _)| s)
            .collect();
        if !later.is_empty() {
            let d = format!(
                "record {} comes before record(s) {} found later in the log",
                rec.seq,
                ranges(&later)
            );
            self.reordered.extend(later.iter().copied());
            self.problem(ProblemKind::Reordered, i, rec.seq, d);
        }
        let missing = gaps(expected, rec.seq, &later);
        if !missing.is_empty() {
            let prev_at = self.prev.map(|p| self.at(p)).unwrap_or_default();
            let d = format!("record(s) {missing} missing between {prev_at} and here");
            self.problem(ProblemKind::Deleted, i, rec.seq, d);
        }
    }

    /// A second record claims a number already used.
    fn duplicate(&mut self, i: usize, rec: &AuditRecord, first: usize) {
        let (first_at, here) = (self.at(first), self.at(i));
        let same = matches!(&self.entries[first].body, Ok(r) if r.hash == rec.hash);
        let next_links_here = self.entries.get(i + 1).is_some_and(
            |n| matches!(&n.body, Ok(r) if r.prev_hash == rec.hash && r.seq == rec.seq + 1),
        );
        if same {
            let d = format!("copy of record {} at {first_at}", rec.seq);
            self.problem(ProblemKind::Inserted, i, rec.seq, d);
        } else if next_links_here {
            // The chain goes on through this record: the first claimant is the intruder.
            let d = format!(
                "not part of the chain: the chain goes on through the other record {} at {here}",
                rec.seq
            );
            self.problem(ProblemKind::Inserted, first, rec.seq, d);
            self.report.head = ChainHead {
                sequence: rec.seq,
                hash: rec.hash.clone(),
            };
            self.prev = Some(i);
        } else {
            let d = format!(
                "a second record claims number {} (first at {first_at})",
                rec.seq
            );
            self.problem(ProblemKind::Inserted, i, rec.seq, d);
        }
    }

    fn accept(&mut self, i: usize, rec: &AuditRecord) {
        if rec.is_checkpoint() {
            self.checkpoint(i, rec);
            self.report.unsigned_tail = 0;
        } else {
            self.report.unsigned_tail += 1;
        }
        self.seen.entry(rec.seq).or_insert(i);
        self.report.records += 1;
        self.report.head = ChainHead {
            sequence: rec.seq,
            hash: rec.hash.clone(),
        };
        self.prev = Some(i);
    }

    fn checkpoint(&mut self, i: usize, rec: &AuditRecord) {
        let Some(cp) = &rec.checkpoint else {
            let d = "checkpoint record without its checkpoint".to_string();
            return self.problem(ProblemKind::Edited, i, rec.seq, d);
        };
        let head = self.report.head.clone();
        if cp.seq != head.sequence || cp.hash != head.hash || cp.seq + 1 != rec.seq {
            let d = format!(
                "checkpoint covers record {} ({}...) but the chain before it ends at record {} ({}...)",
                cp.seq,
                short(&cp.hash),
                head.sequence,
                short(&head.hash)
            );
            self.problem(ProblemKind::CheckpointMismatch, i, rec.seq, d);
        }
        match self.v.signature_ok(cp) {
            Some(false) => {
                let d = format!(
                    "signature over records 1..{} does not verify with the audit public key",
                    cp.seq
                );
                self.problem(ProblemKind::BadSignature, i, rec.seq, d);
            }
            Some(true) => self.report.checkpoints_verified += 1,
            None => {}
        }
        self.report.last_checkpoint = Some(LastCheckpoint {
            record_seq: rec.seq,
            covers: cp.seq,
            file: self.names[self.entries[i].file].clone(),
            line: self.entries[i].line,
        });
    }

    fn finish(mut self) -> ChainReport {
        if self.v.sealed
            && self.report.unsigned_tail > 0
            && let Some(p) = self.prev
        {
            let d = match &self.report.last_checkpoint {
                Some(c) => format!(
                    "log ends {} record(s) after its last checkpoint (record {} at {}:{}): \
                     a cleanly stopped hsmd ends with a checkpoint, so the tail was cut",
                    self.report.unsigned_tail, c.record_seq, c.file, c.line
                ),
                None => "log has no checkpoint at all".to_string(),
            };
            let seq = self.report.head.sequence;
            self.problem(ProblemKind::TruncatedTail, p, seq, d);
        }
        self.report
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// `3..5, 9`.
/// The numbers of `lo..hi` that are not in `present` (sorted), as [`ranges`] writes
/// them, in time proportional to `present`, not to the gap.
fn gaps(lo: u64, hi: u64, present: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut from = lo;
    for &p in present.iter().chain(std::iter::once(&hi)) {
        if p > from {
            let to = p - 1;
            out.push(if from == to {
                from.to_string()
            } else {
                format!("{from}..{to}")
            });
        }
        from = p.saturating_add(1);
    }
    out.join(", ")
}

fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}..{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests;
