//! The record format lives in the `audit-chain` crate (shared with hsmctl's offline
//! verifier); this module adds what only the writer needs: the clock.

pub use audit_chain::record::*;

/// Current time as written in records.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
