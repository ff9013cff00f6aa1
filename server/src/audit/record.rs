//! The record format lives in the `audit-chain` crate (shared with hsmctl's offline
//! verifier); this module adds what only the writer needs: how a record's time is written.

pub(crate) use audit_chain::record::*;

/// `now` as written in records (UTC, microseconds).
pub(crate) fn rfc3339(now: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
