//! `hsmctl audit report`: a review of the audit log over a time range, for people (one
//! self-contained HTML file) or tools (`-o json`, the same figures). The records are
//! read with the query of `audit stats` and counted by its [`Stats`](super::tally::Stats),
//! so both commands give the same numbers for the same range; the checkpoint status is
//! the server's `VerifyAuditLog`, as `audit verify` shows it.

mod chart;
mod figures;
mod html;

use clap::Args;
use hsm_client::v1::VerifyAuditLogResponse;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::args::{parse_since, print_json, write_output};
use super::audit::{parse_until, verify_json};
use super::tally::{OUTCOME_NAMES, Range, SUMMARY_LIMIT, scan};
use super::{CliEnv, CliError, Verdict};
use figures::{Figures, sum};

/// Arguments of `audit report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Records from this far back (1h, 24h, 7d) or since an RFC 3339 time.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    since: String,
    /// Records before this time: an RFC 3339 time, or a duration back from now
    /// (default: up to now).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Write the report here (`-`: stdout): HTML, or with -o json the figures as JSON.
    #[arg(long, value_name = "FILE", default_value = "-")]
    out: String,
    /// Rows in the top principals and top keys tables.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
}

/// What the HTML and JSON renderings are made of.
pub struct Report<'a> {
    pub since: String,
    pub until: String,
    pub generated: String,
    pub endpoint: String,
    pub figures: &'a Figures,
    pub verify: &'a VerifyAuditLogResponse,
    pub top: usize,
    /// The first and last hour of the range (Unix seconds / 3600).
    pub first_hour: i64,
    pub last_hour: i64,
}

impl ReportArgs {
    /// Reads the range, verifies the log, writes the report. Exit 1 when the chain is
    /// broken (the report is written all the same, saying so).
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        // Whole seconds: the range printed is the range queried, and reads cleanly.
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let range = Range {
            since: parse_since(&self.since, now).map_err(CliError::usage)?,
            until: parse_until(self.until.as_deref(), now)?,
            principal: None,
        };
        let end = range.until.unwrap_or(now);
        if end < range.since {
            return Err(CliError::usage(format!(
                "--until {} is before --since {}",
                rfc3339(end),
                rfc3339(range.since)
            )));
        }
        let mut figures = Figures::default();
        scan(env, &range, |r| figures.add(r)).await?;
        let verify = env.client.verify_audit_log().await?;
        let report = Report {
            since: rfc3339(range.since),
            until: rfc3339(end),
            generated: rfc3339(now),
            endpoint: env.endpoint.clone(),
            figures: &figures,
            verify: &verify,
            top: self.top,
            first_hour: range.since.unix_timestamp().div_euclid(3600),
            last_hour: end.unix_timestamp().div_euclid(3600),
        };
        if env.json() {
            if self.out == "-" {
                print_json(&report.json())?;
            } else {
                let text = format!("{}\n", report.json());
                write_output("report", &self.out, text.as_bytes())?;
            }
        } else {
            let page = html::render(&report).map_err(|e| CliError::Local {
                code: "INTERNAL",
                reason: "LOCAL_REPORT",
                message: e,
            })?;
            write_output("report", &self.out, page.as_bytes())?;
        }
        Ok(if verify.ok { Verdict::Yes } else { Verdict::No })
    }
}

impl Report<'_> {
    /// True when the range held more records than one summary reads.
    fn truncated(&self) -> bool {
        self.figures.records >= u64::from(SUMMARY_LIMIT)
    }

    /// One line a reviewer can sign off: range, calls by outcome, principals, keys,
    /// lifecycle events and the chain's state.
    pub fn summary(&self) -> String {
        let f = self.figures;
        let totals = f.totals();
        let by_outcome: Vec<String> = OUTCOME_NAMES
            .iter()
            .zip(totals)
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        let chain = if self.verify.ok {
            format!(
                "audit chain verified: {} records, {} signed checkpoints, head {}",
                self.verify.records_checked,
                self.verify.checkpoints_verified,
                self.verify.head_hash
            )
        } else {
            format!(
                "audit chain BROKEN at record {}: {}",
                self.verify.first_bad_sequence, self.verify.problem
            )
        };
        format!(
            "{} to {}: {} calls ({}) by {} principals on {} keys; {} key lifecycle events; {}{}.",
            self.since,
            self.until,
            sum(&totals),
            by_outcome.join(", "),
            f.principals(),
            f.keys.len(),
            f.lifecycle.len(),
            chain,
            if self.truncated() {
                format!("; only the first {SUMMARY_LIMIT} records were read")
            } else {
                String::new()
            }
        )
    }

    /// The report for tools: the figures, the range, the checkpoint status, the summary.
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.figures.json(self.top);
        v["range"] = json!({ "since": self.since, "until": self.until });
        v["generated"] = json!(self.generated);
        v["truncated"] = json!(self.truncated());
        v["checkpoint"] = verify_json(self.verify);
        v["checkpoint"]["checkpoints_verified"] = json!(self.verify.checkpoints_verified);
        v["checkpoint"]["last_checkpoint_sequence"] = json!(self.verify.last_checkpoint_sequence);
        v["checkpoint"]["unsigned_records"] = json!(self.verify.unsigned_records);
        v["summary"] = json!(self.summary());
        v
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}
