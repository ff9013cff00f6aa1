//! One pass over the audit records of a time range: the request both `audit stats` and
//! `audit report` send, the loop that reads the answer, and [`Stats`], the counts per
//! principal, method and outcome. The report builds its totals and its top principals
//! from the same [`Stats`], so its figures are those of `audit stats` by construction.

use std::collections::BTreeMap;

use hsm_client::ClientError;
use hsm_client::v1::{AuditOutcome, AuditRecord, QueryAuditRequest};
use serde_json::json;
use time::OffsetDateTime;

use super::CliEnv;
use super::CliError;
use super::args::to_timestamp;
use super::table::{Table, cell, or_dash};

/// At most this many records are read for a summary (the server's own ceiling).
pub const SUMMARY_LIMIT: u32 = 100_000;

/// The outcomes counted, in column order.
pub const OUTCOMES: [AuditOutcome; 5] = [
    AuditOutcome::Ok,
    AuditOutcome::Denied,
    AuditOutcome::Invalid,
    AuditOutcome::Failed,
    AuditOutcome::Throttled,
];

/// Lower-case outcome names, in [`OUTCOMES`] order (column names and JSON keys).
pub const OUTCOME_NAMES: [&str; 5] = ["ok", "denied", "invalid", "failed", "throttled"];

/// Counts per outcome, in [`OUTCOMES`] order.
pub type Counts = [u64; 5];

/// Position of a record's outcome in [`OUTCOMES`] (`None` for an unspecified one).
pub fn outcome_index(outcome: i32) -> Option<usize> {
    OUTCOMES.iter().position(|o| *o as i32 == outcome)
}

/// The records summarized: `[since, until)`, optionally of one principal.
#[derive(Debug, Clone)]
pub struct Range {
    pub since: OffsetDateTime,
    /// `None`: up to the moment the server answers.
    pub until: Option<OffsetDateTime>,
    pub principal: Option<String>,
}

impl Range {
    /// The query for every record of the range, up to [`SUMMARY_LIMIT`].
    pub fn request(&self) -> QueryAuditRequest {
        QueryAuditRequest {
            start_time: Some(to_timestamp(self.since)),
            end_time: self.until.map(to_timestamp),
            principal: self.principal.clone().unwrap_or_default(),
            limit: SUMMARY_LIMIT,
            ..Default::default()
        }
    }
}

/// Streams every record of `range` into `each`, oldest first; returns how many came.
pub async fn scan(
    env: &CliEnv,
    range: &Range,
    mut each: impl FnMut(&AuditRecord),
) -> Result<u64, CliError> {
    let mut stream = env.client.query_audit(range.request()).await?;
    let mut n = 0;
    while let Some(r) = stream.message().await.map_err(ClientError::from)? {
        each(&r);
        n += 1;
    }
    Ok(n)
}

/// Calls counted per (principal, method), by outcome.
#[derive(Debug, Default)]
pub struct Stats {
    rows: BTreeMap<(String, String), Counts>,
}

impl Stats {
    /// Counts one record.
    pub fn add(&mut self, r: &AuditRecord) {
        let key = (r.principal.clone(), short_method(&r.method));
        let row = self.rows.entry(key).or_default();
        if let Some(i) = outcome_index(r.outcome) {
            row[i] += 1;
        }
    }

    /// The rows, ordered by principal then method.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &str, &Counts)> {
        self.rows
            .iter()
            .map(|((p, m), c)| (p.as_str(), m.as_str(), c))
    }

    /// Counts of every row added up.
    pub fn totals(&self) -> Counts {
        let mut totals = Counts::default();
        for counts in self.rows.values() {
            add_into(&mut totals, counts);
        }
        totals
    }

    /// Counts per principal (every method added up).
    pub fn by_principal(&self) -> BTreeMap<&str, Counts> {
        let mut out: BTreeMap<&str, Counts> = BTreeMap::new();
        for ((p, _), counts) in &self.rows {
            add_into(out.entry(p.as_str()).or_default(), counts);
        }
        out
    }

    /// The `audit stats` table, with a TOTAL row.
    pub fn table(&self) -> String {
        let mut t = Table::new(&[
            "PRINCIPAL",
            "METHOD",
            "OK",
            "DENIED",
            "INVALID",
            "FAILED",
            "THROTTLED",
            "TOTAL",
        ]);
        for (p, m, counts) in self.rows() {
            let mut cells = vec![or_dash(cell(p)), m.to_string()];
            cells.extend(counts.iter().map(u64::to_string));
            cells.push(counts.iter().sum::<u64>().to_string());
            t.row(cells);
        }
        let totals = self.totals();
        let mut cells = vec!["TOTAL".to_string(), String::new()];
        cells.extend(totals.iter().map(u64::to_string));
        cells.push(totals.iter().sum::<u64>().to_string());
        t.row(cells);
        t.render()
    }

    /// `{"rows": [{"principal", "method", "ok", ..., "total"}]}`.
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows()
            .map(|(p, m, c)| {
                let mut row = counts_json(c);
                row["principal"] = json!(p);
                row["method"] = json!(m);
                row
            })
            .collect();
        json!({ "rows": rows })
    }
}

/// `{"ok": n, "denied": n, "invalid": n, "failed": n, "throttled": n, "total": n}`.
pub fn counts_json(c: &Counts) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    for (name, n) in OUTCOME_NAMES.iter().zip(c) {
        obj.insert((*name).to_string(), json!(n));
    }
    obj.insert("total".into(), json!(c.iter().sum::<u64>()));
    serde_json::Value::Object(obj)
}

/// Adds `more` into `into`, outcome by outcome.
pub fn add_into(into: &mut Counts, more: &Counts) {
    for (a, b) in into.iter_mut().zip(more) {
        *a += b;
    }
}

/// `/hsmd.v1.KeyService/Sign` -> `Sign`: the service is clear from the method name.
pub fn short_method(method: &str) -> String {
    method.rsplit('/').next().unwrap_or(method).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::parse_rfc3339;

    fn rec(p: &str, m: &str, o: AuditOutcome) -> AuditRecord {
        AuditRecord {
            principal: p.into(),
            method: format!("/hsmd.v1.KeyService/{m}"),
            outcome: o as i32,
            ..Default::default()
        }
    }

    #[test]
    fn stats_count_per_principal_method_and_outcome() {
        let mut s = Stats::default();
        s.add(&rec("a", "Sign", AuditOutcome::Ok));
        s.add(&rec("a", "Sign", AuditOutcome::Throttled));
        s.add(&rec("b", "Sign", AuditOutcome::Denied));
        let text = s.table();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[1], ["a", "Sign", "1", "0", "0", "0", "1", "2"]);
        assert_eq!(lines[2], ["b", "Sign", "0", "1", "0", "0", "0", "1"]);
        assert_eq!(lines[3], ["TOTAL", "1", "1", "0", "0", "1", "3"]);
        let json = s.json();
        assert_eq!(json["rows"][0]["throttled"], 1);
        assert_eq!(json["rows"][0]["total"], 2);
        assert_eq!(json["rows"][1]["principal"], "b");
        assert_eq!(s.totals(), [1, 1, 0, 0, 1]);
        assert_eq!(s.by_principal()["a"], [1, 0, 0, 0, 1]);
    }

    #[test]
    fn range_becomes_the_request() {
        let since = parse_rfc3339("2025-01-31T11:00:00Z").unwrap();
        let until = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        let req = Range {
            since,
            until: Some(until),
            principal: None,
        }
        .request();
        assert_eq!(req.start_time.unwrap().seconds, since.unix_timestamp());
        assert_eq!(req.end_time.unwrap().seconds, until.unix_timestamp());
        assert_eq!(req.limit, SUMMARY_LIMIT);
        assert!(req.principal.is_empty());
    }

    #[test]
    fn short_methods() {
        assert_eq!(short_method("/hsmd.v1.KeyService/Sign"), "Sign");
        assert_eq!(short_method("Sign"), "Sign");
    }
}
