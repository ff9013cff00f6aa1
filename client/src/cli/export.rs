//! `hsmctl audit export --since SEQ [--syslog URL]`: resends a range of audit records
//! after a syslog outage. The records come from the server (QueryAudit, paged by
//! sequence number), so the export works from any machine with an audit grant and is
//! itself audited; each is sent as the same RFC 5424 message the daemon forwards
//! (`audit_chain::syslog`: the record's own time, seq and hash, its JSON line as
//! written), so the receiver gets identical messages (only the host name in the header
//! is this machine's).

use audit_chain::AuditRecord as ChainRecord;
use audit_chain::syslog::{self, Connection, Target};
use clap::Args;
use hsm_client::ClientError;
use hsm_client::v1::QueryAuditRequest;
use serde_json::json;

use super::args::{print_json, println};
use super::{CliEnv, CliError, Verdict};

/// Records asked for per QueryAudit page.
const PAGE: u32 = 10_000;

/// Arguments of `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// First sequence number to resend (inclusive).
    #[arg(long, value_name = "SEQ")]
    since: u64,
    /// Last sequence number to resend (inclusive) [default: the head of the log].
    #[arg(long, value_name = "SEQ")]
    until: Option<u64>,
    /// The syslog receiver: tcp://HOST:PORT (RFC 6587 octet counting) or
    /// unix:///PATH (e.g. unix:///dev/log). Without it the messages go to stdout.
    #[arg(long, value_name = "URL", value_parser = Target::parse)]
    syslog: Option<Target>,
}

impl ExportArgs {
    /// Runs the export; prints (or, with -o json, writes as JSON) how many records went
    /// where.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let mut conn = match &self.syslog {
            Some(t) => Some(
                Connection::open(t, std::time::Duration::from_secs(10))
                    .map_err(|e| unavailable(t, e))?,
            ),
            None => None,
        };
        let host = syslog::hostname();
        let (mut next, mut sent, mut last) = (self.since, 0u64, None);
        'pages: loop {
            let req = QueryAuditRequest {
                min_sequence: next,
                limit: PAGE,
                ..Default::default()
            };
            let mut stream = env.client.query_audit(req).await?;
            let mut in_page = 0;
            while let Some(r) = stream.message().await.map_err(ClientError::from)? {
                in_page += 1;
                if self.until.is_some_and(|u| r.sequence > u) {
                    break 'pages;
                }
                let rec: ChainRecord = serde_json::from_str(&r.json).map_err(|e| {
                    CliError::usage(format!("record {} is not an audit line: {e}", r.sequence))
                })?;
                let msg = syslog::message(&host, &rec.time, rec.seq, &rec.hash, r.json.trim_end());
                match (&mut conn, &self.syslog) {
                    (Some(c), Some(t)) => c.send(&msg).map_err(|e| unavailable(t, e))?,
                    _ => println(&msg)?,
                }
                sent += 1;
                last = Some(rec.seq);
                next = rec.seq + 1;
            }
            if in_page < PAGE {
                break;
            }
        }
        if let (Some(c), Some(t)) = (conn.as_mut(), &self.syslog) {
            c.flush().map_err(|e| unavailable(t, e))?;
        }
        let to = self
            .syslog
            .as_ref()
            .map_or("stdout".to_string(), |t| t.to_string());
        if env.json() && self.syslog.is_some() {
            print_json(&json!({ "exported": sent, "first": self.since, "last": last, "to": to }))?;
        } else if self.syslog.is_some() {
            let range = last.map_or("none".into(), |l| format!("{}..{l}", self.since));
            println(format!("exported {sent} records (seq {range}) to {to}"))?;
        }
        Ok(Verdict::Yes)
    }
}

/// The receiver cannot be reached or refused a message: UNAVAILABLE, retry later.
fn unavailable(t: &Target, e: std::io::Error) -> CliError {
    CliError::Local {
        code: "UNAVAILABLE",
        reason: "SYSLOG_UNAVAILABLE",
        message: format!("syslog receiver {t}: {e}"),
    }
}
