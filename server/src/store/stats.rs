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
        self.with(|c| {
            let keys_by_state = c
                .query("SELECT state, COUNT(*) FROM keys GROUP BY state ORDER BY state", &[])?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let count = |c: &mut dyn super::sql::Db, sql: &str, args: &[super::sql::Value]| {
                c.query_opt(sql, args)?
                    .map_or(Ok(0), |r| r.get::<i64>(0))
            };
            Ok(StoreCounts {
                keys_by_state,
                import_tokens_live: count(
                    c,
                    "SELECT COUNT(*) FROM import_tokens WHERE superseded_by IS NULL AND expire_time > ?1",
                    super::sql::args![now],
                )?,
                registry_events_queued: count(c, "SELECT COUNT(*) FROM registry_events", &[])?,
            })
        })
    }
}
