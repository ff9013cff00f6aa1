//! `hsmctl audit ...`: query the audit log (table for people, the records' own JSON
//! lines for tools), summarize it, export the audit public key, and verify the hash
//! chain and the signed checkpoints, on the server or offline from the files.

use clap::{Args, Subcommand};
use hsm_client::ClientError;
use hsm_client::names::{self, name_of};
use hsm_client::v1::{AuditOutcome, AuditRecord, QueryAuditRequest, VerifyAuditLogResponse};
use serde_json::json;
use time::OffsetDateTime;

use super::args::{
    format_timestamp, parse_rfc3339, parse_since, print, print_json, println, to_timestamp,
};
use super::table::{Table, cell, or_dash};
use super::tally::{Range, Stats, scan, short_method};
use super::{CliEnv, CliError, Verdict};

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records matching every filter, oldest first. Table: time, seq,
    /// principal, method, key, outcome, reason, duration. JSON: each record's log line
    /// exactly as written (one JSON object per line).
    Query(QueryArgs),
    /// Check the audit log. Without FILES: on the server (chain and checkpoint
    /// signatures), printing `ok: N records, head <hash>` (exit 0) or
    /// `BROKEN at record <sequence> (line <line>): <problem>` (exit 1). With FILES (or a
    /// folder): offline, without the daemon; every edited, inserted, deleted or
    /// reordered record, bad checkpoint signature and torn line is printed as
    /// `KIND: FILE:LINE (seq N): what` (exit 1).
    Verify(super::verify::VerifyArgs),
    /// Summarize calls per principal, method and outcome.
    Stats(StatsArgs),
    /// Write a review report of a time range: one self-contained HTML file (calls per
    /// hour by outcome, top principals and keys, every denied, throttled and failed
    /// call, key lifecycle events, checkpoint status, a summary line to sign off), or
    /// with -o json the same figures as JSON. Its counts are those of `audit stats`
    /// for the same range. Exit 1 when the audit chain does not verify.
    Report(super::report::ReportArgs),
    /// Print the audit public key (PEM) that checkpoint signatures verify with.
    PublicKey(PublicKeyArgs),
    /// Resend audit records from sequence number SEQ on, read from the server
    /// (QueryAudit), as the same RFC 5424 messages hsmd forwards (`[audit.forward]`):
    /// to a syslog receiver with --syslog, else one message per line on stdout. For
    /// filling the gap after a receiver outage.
    Export(super::export::ExportArgs),
}

/// Arguments of `audit stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only records from this far back (1h, 24h, 7d) or since an RFC 3339 time.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    since: String,
    /// Only records before this time: an RFC 3339 time, or a duration back from now.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only records of this principal.
    #[arg(long, value_name = "P")]
    principal: Option<String>,
}

/// Arguments of `audit public-key`.
#[derive(Debug, Args)]
pub struct PublicKeyArgs {
    /// Write the PEM to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

/// Arguments of `audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Only records from this far back (1h, 30m, 7d, 1h30m) or since an RFC 3339 time.
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only records before this RFC 3339 time (e.g. 2025-01-31T12:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    until: Option<OffsetDateTime>,
    /// Only records of this principal (exact, e.g. spiffe://corp/payments).
    #[arg(long, value_name = "P")]
    principal: Option<String>,
    /// Only records about this key (UUID or alias, as recorded).
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Only records of this method ("Sign" or "/hsmd.v1.KeyService/Sign").
    #[arg(long, value_name = "M")]
    method: Option<String>,
    /// Only records with this outcome: ok, denied, invalid, failed, throttled.
    #[arg(long, value_name = "O", value_parser = names::parse::<AuditOutcome>)]
    outcome: Option<AuditOutcome>,
    /// At most N records (server default 1000, at most 100000; offline: no limit).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Log files or folders to read offline, without the daemon (as `audit verify`
    /// does; a cluster's audit folder is read node by node); the matching records are
    /// printed as their lines, table or not.
    #[arg(value_name = "FILES")]
    files: Vec<std::path::PathBuf>,
}

impl AuditCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            AuditCommand::Query(a) => a.run(env).await,
            AuditCommand::Stats(a) => a.run(env).await,
            AuditCommand::Report(a) => a.run(env).await,
            AuditCommand::Export(a) => a.run(env).await,
            AuditCommand::PublicKey(a) => {
                let key = env.client.audit_public_key().await?;
                if env.json() {
                    print_json(&json!({
                        "public_key_pem": key.public_key_pem,
                        "algorithm": key.algorithm,
                    }))?;
                } else {
                    super::args::write_output(
                        "public key",
                        a.out.as_deref().unwrap_or("-"),
                        key.public_key_pem.as_bytes(),
                    )?;
                }
                Ok(Verdict::Yes)
            }
            // Answered per endpoint by `verify_each` before a client is made.
            AuditCommand::Verify(_) => Err(CliError::usage(
                "audit verify asks each endpoint of the profile (verify_each)",
            )),
        }
    }
}

impl QueryArgs {
    fn request(&self, now: OffsetDateTime) -> Result<QueryAuditRequest, CliError> {
        let since = match &self.since {
            Some(s) => Some(parse_since(s, now).map_err(CliError::usage)?),
            None => None,
        };
        Ok(QueryAuditRequest {
            start_time: since.map(to_timestamp),
            end_time: self.until.map(to_timestamp),
            principal: self.principal.clone().unwrap_or_default(),
            key_id: self.key.clone().unwrap_or_default(),
            method: self.method.clone().unwrap_or_default(),
            outcome: self.outcome.map_or(0, |o| o as i32),
            limit: self.limit.unwrap_or(0),
            min_sequence: 0,
        })
    }

    /// True when this reads files instead of asking the daemon.
    pub fn offline(&self) -> bool {
        !self.files.is_empty()
    }

    /// Reads the files (see `audit_chain::query`) and prints each matching line.
    pub fn run_offline(&self) -> Result<Verdict, CliError> {
        let now = OffsetDateTime::now_utc();
        let since = match &self.since {
            Some(s) => Some(parse_since(s, now).map_err(CliError::usage)?),
            None => None,
        };
        let filter = audit_chain::query::Filter {
            since: since.map(record_time),
            until: self.until.map(record_time),
            principal: self.principal.clone(),
            key: self.key.clone(),
            method: self.method.clone(),
            outcome: self.outcome.and_then(outcome),
            limit: self.limit.filter(|&n| n > 0).map(u64::from),
        };
        let io = |e: std::io::Error| CliError::io("cannot read", "audit log", e);
        // A cluster's audit folder holds one chain per node: each is read in its own
        // order, one node after another (every record names its node).
        let chains = audit_chain::files::chains(&self.files).map_err(io)?;
        if chains.iter().all(|(_, paths)| paths.is_empty()) {
            return Err(CliError::usage("no audit log files found there"));
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        for (_, paths) in &chains {
            audit_chain::query::query_files(paths, &filter, &mut out).map_err(io)?;
        }
        Ok(Verdict::Yes)
    }

    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let req = self.request(OffsetDateTime::now_utc())?;
        if !env.json() {
            // Columns need every row before the first can be printed.
            let records = env.client.query_audit_all(req).await?;
            print(&records_table(&records))?;
            return Ok(Verdict::Yes);
        }
        let mut stream = env.client.query_audit(req).await?;
        while let Some(record) = stream.message().await.map_err(ClientError::from)? {
            println(record.json.trim_end())?;
        }
        Ok(Verdict::Yes)
    }
}

impl StatsArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let now = OffsetDateTime::now_utc();
        let range = Range {
            since: parse_since(&self.since, now).map_err(CliError::usage)?,
            until: parse_until(self.until.as_deref(), now)?,
            principal: self.principal,
        };
        let mut stats = Stats::default();
        scan(env, &range, |r| stats.add(r)).await?;
        if env.json() {
            print_json(&stats.json())?;
        } else {
            print(&stats.table())?;
        }
        Ok(Verdict::Yes)
    }
}

/// Parses `--until` as `--since` is parsed (a duration back from now, or an RFC 3339
/// time); `None` when not given.
pub(super) fn parse_until(
    until: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, CliError> {
    until
        .map(|u| parse_since(u, now).map_err(CliError::usage))
        .transpose()
}

/// A time as records write it (UTC, microseconds), so filters compare as text.
fn record_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The outcome filter; none for UNSPECIFIED, as on the server.
fn outcome(o: AuditOutcome) -> Option<audit_chain::Outcome> {
    use audit_chain::Outcome as O;
    Some(match o {
        AuditOutcome::Unspecified => return None,
        AuditOutcome::Ok => O::Ok,
        AuditOutcome::Denied => O::Denied,
        AuditOutcome::Invalid => O::Invalid,
        AuditOutcome::Failed => O::Failed,
        AuditOutcome::Throttled => O::Throttled,
    })
}

fn records_table(records: &[AuditRecord]) -> String {
    let mut t = Table::new(&[
        "TIME",
        "SEQ",
        "PRINCIPAL",
        "METHOD",
        "KEY",
        "OUTCOME",
        "REASON",
        "DURATION",
    ]);
    for r in records {
        let key = if r.alias.is_empty() {
            &r.key_id
        } else {
            &r.alias
        };
        t.row([
            or_dash(format_timestamp(r.time.as_ref()).unwrap_or_default()),
            r.sequence.to_string(),
            or_dash(cell(&r.principal)),
            or_dash(short_method(&r.method)),
            or_dash(cell(key)),
            name_of::<AuditOutcome>(r.outcome).to_ascii_lowercase(),
            or_dash(cell(&r.reason)),
            format_micros(r.duration_us),
        ]);
    }
    t.render()
}

/// 850us, 12.3ms, 1.25s.
fn format_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn verify_line(r: &VerifyAuditLogResponse) -> String {
    // A replica of a cluster names itself after the verdict: "ok: node a: ...".
    let (sep, node) = if r.node.is_empty() {
        (" ", String::new())
    } else {
        (": ", format!("node {}: ", r.node))
    };
    if r.ok {
        format!(
            "ok: {node}{} records, head {}",
            r.records_checked, r.head_hash
        )
    } else {
        format!(
            "BROKEN{sep}{node}at record {} (line {}): {}",
            r.first_bad_sequence, r.first_bad_line, r.problem
        )
    }
}

/// `audit verify` against the daemon: every endpoint of the profile (each replica of a
/// cluster; the one `--endpoint` names) verifies its own chain, one line per node. A
/// replica that cannot be asked is a line of its own (`UNREACHABLE: ENDPOINT: why`),
/// and fails the verdict like a broken chain.
pub(super) async fn verify_each(
    profile: &hsm_client::Profile,
    json_out: bool,
) -> Result<Verdict, CliError> {
    let endpoints: Vec<String> = profile
        .endpoint_list()
        .into_iter()
        .map(String::from)
        .collect();
    let mut answers = Vec::with_capacity(endpoints.len());
    for endpoint in &endpoints {
        let mut one = profile.clone();
        one.set_endpoint(endpoint.clone());
        let answer = match hsm_client::Client::connect(&one).await {
            Ok(c) => c.verify_audit_log().await,
            Err(e) => Err(e),
        };
        answers.push((endpoint, answer));
    }
    if answers.len() == 1 {
        // One endpoint: its error is the command's, as for any other call.
        let resp = answers.pop().map(|(_, a)| a).expect("one answer")?;
        if json_out {
            print_json(&verify_json(&resp))?;
        } else {
            println(verify_line(&resp))?;
        }
        return Ok(if resp.ok { Verdict::Yes } else { Verdict::No });
    }
    let mut all_ok = true;
    let mut nodes = Vec::new();
    for (endpoint, answer) in answers {
        match answer {
            Ok(resp) => {
                all_ok &= resp.ok;
                if json_out {
                    let mut j = verify_json(&resp);
                    j["endpoint"] = json!(endpoint);
                    nodes.push(j);
                } else {
                    println(verify_line(&resp))?;
                }
            }
            Err(e) => {
                all_ok = false;
                let why = CliError::from(e).line();
                if json_out {
                    nodes.push(json!({"endpoint": endpoint, "ok": false, "error": why}));
                } else {
                    println(format!("UNREACHABLE: {endpoint}: {why}"))?;
                }
            }
        }
    }
    if json_out {
        print_json(&json!({"ok": all_ok, "nodes": nodes}))?;
    }
    Ok(if all_ok { Verdict::Yes } else { Verdict::No })
}

pub(super) fn verify_json(r: &VerifyAuditLogResponse) -> serde_json::Value {
    json!({
        "ok": r.ok,
        "records_checked": r.records_checked,
        "first_bad_sequence": r.first_bad_sequence,
        "first_bad_line": r.first_bad_line,
        "problem": r.problem,
        "head_hash": r.head_hash,
        "node": r.node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_formats() {
        assert_eq!(format_micros(850), "850us");
        assert_eq!(format_micros(12_345), "12.3ms");
        assert_eq!(format_micros(1_250_000), "1.25s");
    }

    #[test]
    fn verify_lines() {
        let ok = VerifyAuditLogResponse {
            ok: true,
            records_checked: 42,
            head_hash: "ab12".into(),
            ..Default::default()
        };
        assert_eq!(verify_line(&ok), "ok: 42 records, head ab12");
        let on_node = VerifyAuditLogResponse {
            node: "a".into(),
            ..ok.clone()
        };
        assert_eq!(verify_line(&on_node), "ok: node a: 42 records, head ab12");
        let broken = VerifyAuditLogResponse {
            first_bad_sequence: 7,
            first_bad_line: 8,
            problem: "prev_hash does not match".into(),
            ..Default::default()
        };
        assert_eq!(
            verify_line(&broken),
            "BROKEN at record 7 (line 8): prev_hash does not match"
        );
    }

    #[test]
    fn query_filters_become_the_request() {
        let now = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        let args = QueryArgs {
            since: Some("1h".into()),
            until: None,
            principal: Some("spiffe://corp/x".into()),
            key: None,
            method: Some("Sign".into()),
            outcome: Some(AuditOutcome::Denied),
            limit: Some(5),
            files: Vec::new(),
        };
        let req = args.request(now).unwrap();
        assert_eq!(req.start_time.unwrap().seconds, now.unix_timestamp() - 3600);
        assert_eq!(req.end_time, None);
        assert_eq!(req.outcome, AuditOutcome::Denied as i32);
        assert_eq!(req.limit, 5);
    }

    #[test]
    fn table_columns() {
        let r = AuditRecord {
            sequence: 3,
            principal: "spiffe://corp/x".into(),
            method: "/hsmd.v1.KeyService/Sign".into(),
            key_id: "k1".into(),
            outcome: AuditOutcome::Ok as i32,
            duration_us: 900,
            ..Default::default()
        };
        let text = records_table(&[r]);
        let row = text.lines().nth(1).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "-",
                "3",
                "spiffe://corp/x",
                "Sign",
                "k1",
                "ok",
                "-",
                "900us"
            ]
        );
    }
}
