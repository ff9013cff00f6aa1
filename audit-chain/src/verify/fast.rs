//! The verifier's fast path for a log that is whole: each file is read as a stream
//! (1 MiB buffer, one line in memory) on its own thread, every line read in place
//! ([`LineView`]) and its own hash taken over the bytes as read, links, numbers and
//! checkpoints (signatures included) checked inside the file; then the files are joined
//! in chain order (each file's first record must link to the previous file's last).
//! Memory stays flat in the log's size.
//!
//! The fast path only ever says "whole". At the first thing it does not expect (a line
//! that is not exactly as hsmd writes it, a hash, link, number or signature that does
//! not match, a torn line, a missing start, an unsigned tail with `sealed`) it gives up,
//! and the full walk in `verify.rs` reads the log again and names every problem.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{ChainReport, LastCheckpoint, Verifier};
use crate::line::LineView;
use crate::record::{CHECKPOINT_METHOD, Checkpoint, GENESIS_HASH};
use crate::walk::{ChainHead, MAX_LINE};

/// Read buffer of each file.
const BUF: usize = 1 << 20;

/// What one whole file holds, for joining files in order.
#[derive(Debug, Default)]
struct Segment {
    /// Sequence number and `prev_hash` of the first record.
    first: Option<(u64, String)>,
    /// Sequence number and `hash` of the last record.
    last: Option<(u64, String)>,
    records: u64,
    checkpoints_verified: u64,
    /// Last checkpoint: (its sequence, the record it covers, its line).
    last_checkpoint: Option<(u64, u64, u64)>,
    /// Records after the last checkpoint of this file (or all, without one).
    tail: u64,
}

/// Verifies a whole log quickly; `None` when anything is unexpected (the caller then
/// runs the full walk), or on a read error.
pub(super) fn verify(v: &Verifier, paths: &[&Path]) -> Option<ChainReport> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let segments: Vec<Mutex<Option<Segment>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= paths.len() || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    match segment(v, paths[i]) {
                        Some(seg) => {
                            *segments[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(seg)
                        }
                        None => failed.store(true, Ordering::Relaxed),
                    }
                }
            });
        }
    });
    if failed.into_inner() {
        return None;
    }
    let segments: Option<Vec<Segment>> = segments
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    join(v, paths, segments?)
}

/// Joins the files' segments in chain order.
fn join(v: &Verifier, paths: &[&Path], segments: Vec<Segment>) -> Option<ChainReport> {
    let mut report = ChainReport {
        files: paths.len(),
        signatures_checked: v.key.is_some(),
        head: ChainHead {
            sequence: 0,
            hash: GENESIS_HASH.to_string(),
        },
        ..Default::default()
    };
    for (seg, path) in segments.into_iter().zip(paths) {
        let (Some((first, prev)), Some((last, hash))) = (seg.first, seg.last) else {
            continue; // an empty file
        };
        if first != report.head.sequence + 1 || prev != report.head.hash {
            return None;
        }
        report.records += seg.records;
        report.checkpoints_verified += seg.checkpoints_verified;
        if let Some((record_seq, covers, line)) = seg.last_checkpoint {
            report.last_checkpoint = Some(LastCheckpoint {
                record_seq,
                covers,
                file: path.display().to_string(),
                line,
            });
            report.unsigned_tail = seg.tail;
        } else {
            report.unsigned_tail += seg.tail;
        }
        report.head = ChainHead {
            sequence: last,
            hash,
        };
    }
    if report.records == 0 {
        report.head = ChainHead::default();
    }
    if v.sealed && report.unsigned_tail > 0 {
        return None;
    }
    Some(report)
}

/// Checks one file on its own; `None` at anything unexpected.
fn segment(v: &Verifier, path: &Path) -> Option<Segment> {
    let mut r = BufReader::with_capacity(BUF, File::open(path).ok()?);
    let mut buf = Vec::with_capacity(1024);
    let mut seg = Segment::default();
    // The head before the current line: (sequence, hash), known after the first line.
    let mut head: Option<(u64, Vec<u8>)> = None;
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf).ok()?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.pop() != Some(b'\n') {
            return None; // torn, or longer than MAX_LINE
        }
        let rec = LineView::parse(&buf)?;
        if !rec.hash_ok() {
            return None;
        }
        let (head_seq, head_hash) = match &head {
            Some((s, h)) => (*s, h.as_slice()),
            None => {
                seg.first = Some((rec.seq, text(rec.prev_hash)?));
                (rec.seq.checked_sub(1)?, rec.prev_hash)
            }
        };
        if rec.seq != head_seq + 1 || rec.prev_hash != head_hash {
            return None;
        }
        if rec.method == CHECKPOINT_METHOD.as_bytes() {
            let cp = rec.checkpoint?;
            if cp.seq != head_seq || cp.hash != head_hash {
                return None;
            }
            let checkpoint = Checkpoint {
                seq: cp.seq,
                hash: text(cp.hash)?,
                signature: text(cp.signature)?,
            };
            match v.signature_ok(&checkpoint) {
                Some(false) => return None,
                Some(true) => seg.checkpoints_verified += 1,
                None => {}
            }
            seg.last_checkpoint = Some((rec.seq, cp.seq, line_no));
            seg.tail = 0;
        } else if rec.checkpoint.is_some() {
            return None; // the full walk does not treat it as a checkpoint: let it say so
        } else {
            seg.tail += 1;
        }
        seg.records += 1;
        head = Some((rec.seq, rec.hash.to_vec()));
    }
    if let Some((seq, hash)) = head {
        seg.last = Some((seq, String::from_utf8(hash).ok()?));
    }
    Some(seg)
}

/// A field's text, when it needs no unescaping.
fn text(escaped: &[u8]) -> Option<String> {
    if escaped.contains(&b'\\') {
        return None;
    }
    String::from_utf8(escaped.to_vec()).ok()
}
