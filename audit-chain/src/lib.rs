//! hsmd's audit log format, shared by the daemon (which writes it) and by `hsmctl`
//! (which verifies it offline, without the daemon).
//!
//! - [`record`]: one JSON line per call, its own `hash` and the `prev_hash` chain, and the
//!   signed checkpoint records;
//! - [`line`]: a record's line read in place (the fast paths of verify and query);
//! - [`query`]: the offline query over the files (`hsmctl audit query FILES`);
//! - [`walk`]: the strict walk hsmd does over its current file at start-up;
//! - [`verify`]: the offline verifier over rotated files, which names every edited,
//!   inserted, deleted or reordered record, bad checkpoint signatures and a cut tail,
//!   each with its file, line and sequence number;
//! - [`syslog`]: a record as an RFC 5424 message, and the TCP / Unix socket transports.

pub mod files;
#[doc(hidden)]
pub mod fuzz;
pub mod line;
pub mod query;
pub mod record;
pub mod syslog;
pub mod verify;
pub mod walk;

#[cfg(test)]
mod proptests;

pub use record::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH, Outcome};
pub use verify::{ChainReport, Problem, ProblemKind, Verifier};
pub use walk::{BadRecord, ChainHead, WalkReport};
