//! Counts for the metrics: keys by state and live import tokens, read at scrape time.

use super::{Store, StoreError};

/// What a scrape shows of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoreCounts {
    /// State name (as stored, e.g. `ENABLED`) and how many keys are in it.
    pub(crate) keys_by_state: Vec<(String, i64)>,
    /// Import tokens neither superseded nor expired at `now`.
    pub(crate) import_tokens_live: i64,
    /// Registry pushes queued for image signing (not yet handled).
    pub(crate) registry_events_queued: i64,
}

impl Store {
    /// Keys by state, the import tokens live at `now` (Unix seconds) and the registry
    /// pushes queued for signing.
    pub(crate) fn counts(&self, now: i64) -> Result<StoreCounts, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM keys GROUP BY state ORDER BY state")?;
            let keys_by_state = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let import_tokens_live = conn.query_row(
                "SELECT COUNT(*) FROM import_tokens WHERE superseded_by IS NULL AND expire_time > ?1",
                [now],
                |r| r.get(0),
            )?;
            let registry_events_queued =
                conn.query_row("SELECT COUNT(*) FROM registry_events", [], |r| r.get(0))?;
            Ok(StoreCounts {
                keys_by_state,
                import_tokens_live,
                registry_events_queued,
            })
        })
    }
}
