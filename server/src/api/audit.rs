//! AuditService: streaming queries over every file of the log, chain and checkpoint
//! verification, and the audit public key. These calls are audited too.

use std::pin::Pin;

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::audit_service_server::AuditService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ApiError, ApiState};
use crate::audit::{self, AuditQuery, AuditRecord, Outcome};
use crate::auth::Action;
use crate::encoding::public;
use crate::keys::KeyError;

const MAX_LIMIT: u32 = 100_000;

/// The AuditService implementation.
pub(crate) struct AuditApi {
    state: ApiState,
}

impl AuditApi {
    pub(crate) fn new(state: ApiState) -> Self {
        AuditApi { state }
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

fn rfc3339(t: &prost_types::Timestamp) -> Result<String, ApiError> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .map_err(|_| KeyError::InvalidArgument("timestamp out of range".into()))?
        + time::Duration::nanoseconds(i64::from(t.nanos));
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    dt.format(&fmt)
        .map_err(|e| KeyError::InvalidArgument(format!("timestamp: {e}")).into())
}

fn outcome_from_pb(v: i32) -> Result<Option<Outcome>, ApiError> {
    Ok(match pb::AuditOutcome::try_from(v) {
        Ok(pb::AuditOutcome::Unspecified) => None,
        Ok(pb::AuditOutcome::Ok) => Some(Outcome::Ok),
        Ok(pb::AuditOutcome::Denied) => Some(Outcome::Denied),
        Ok(pb::AuditOutcome::Invalid) => Some(Outcome::Invalid),
        Ok(pb::AuditOutcome::Failed) => Some(Outcome::Failed),
        Ok(pb::AuditOutcome::Throttled) => Some(Outcome::Throttled),
        Err(_) => return Err(KeyError::InvalidArgument(format!("unknown outcome {v}")).into()),
    })
}

fn outcome_to_pb(o: Outcome) -> i32 {
    (match o {
        Outcome::Ok => pb::AuditOutcome::Ok,
        Outcome::Denied => pb::AuditOutcome::Denied,
        Outcome::Invalid => pb::AuditOutcome::Invalid,
        Outcome::Failed => pb::AuditOutcome::Failed,
        Outcome::Throttled => pb::AuditOutcome::Throttled,
    }) as i32
}

fn parse_time(rfc: &str) -> Option<prost_types::Timestamp> {
    let t =
        time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// Proto form of a record and its line.
pub(crate) fn record_to_pb(r: AuditRecord, line: String) -> pb::AuditRecord {
    pb::AuditRecord {
        sequence: r.seq,
        time: parse_time(&r.time),
        request_id: r.request_id,
        principal: r.principal,
        peer: r.peer,
        method: r.method,
        key_id: r.key_id,
        alias: r.alias,
        algorithm: r.algorithm,
        message_type: r.message_type,
        input_sha256: r.input_sha256,
        outcome: outcome_to_pb(r.outcome),
        status: r.status,
        reason: r.reason,
        duration_us: r.duration_us,
        prev_hash: r.prev_hash,
        hash: r.hash,
        node: r.node,
        json: line,
    }
}

fn query(r: pb::QueryAuditRequest) -> Result<AuditQuery, ApiError> {
    if r.limit > MAX_LIMIT {
        return Err(
            KeyError::InvalidArgument(format!("limit {} is over {MAX_LIMIT}", r.limit)).into(),
        );
    }
    let start = r.start_time.as_ref().map(rfc3339).transpose()?;
    let end = r.end_time.as_ref().map(rfc3339).transpose()?;
    if let (Some(s), Some(e)) = (&start, &end)
        && s > e
    {
        return Err(KeyError::InvalidArgument("start_time is after end_time".into()).into());
    }
    let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
    Ok(AuditQuery {
        start,
        end,
        principal: nonempty(r.principal),
        key: nonempty(r.key_id),
        method: nonempty(r.method),
        outcome: outcome_from_pb(r.outcome)?,
        min_seq: r.min_sequence,
        limit: if r.limit == 0 { 1000 } else { r.limit as usize },
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type QueryAuditStream = RecordStream;

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let call = self.state.call(req, "/hsmd.v1.AuditService/QueryAudit");
        call.answer(Action::QueryAudit, async |_, _, r| {
            query(r).map(|q| {
                let (tx, rx) = tokio::sync::mpsc::channel(256);
                let log = self.state.audit.clone();
                tokio::task::spawn_blocking(move || {
                    let res = log.files().and_then(|files| {
                        audit::query_files(&files, &q, |rec, line| {
                            tx.blocking_send(Ok(record_to_pb(rec, line))).is_ok()
                        })
                    });
                    if let Err(e) = res {
                        let _ = tx.blocking_send(Err(ApiError::Key(KeyError::Unavailable(
                            e.to_string(),
                        ))
                        .to_status()));
                    }
                });
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as RecordStream
            })
        })
        .await
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let call = self.state.call(req, "/hsmd.v1.AuditService/VerifyAuditLog");
        call.answer(Action::VerifyAuditLog, async |_, _, _| {
            let pem = self.public_key_pem().await?;
            let verifier = audit_chain::Verifier::from_pem(&pem).map_err(KeyError::Internal)?;
            let written = self.state.audit.head();
            let log = self.state.audit.clone();
            let mut report = tokio::task::spawn_blocking(move || {
                let files = log.files().map_err(|e| e.to_string())?;
                verifier.verify_files(&files).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| KeyError::Internal(e.to_string()))?
            .map_err(KeyError::Unavailable)?;
            // A group being written right now can look like a torn last line.
            if let Some(last) = report.problems.last()
                && last.kind == audit_chain::ProblemKind::TornLine
                && written.sequence > report.head.sequence
            {
                report.problems.pop();
            }
            let mut resp = verify_response(report, written);
            resp.node = self.state.audit.node().to_string();
            Ok(resp)
        })
        .await
    }

    async fn get_audit_public_key(
        &self,
        req: Request<pb::GetAuditPublicKeyRequest>,
    ) -> Result<Response<pb::GetAuditPublicKeyResponse>, Status> {
        let call = self
            .state
            .call(req, "/hsmd.v1.AuditService/GetAuditPublicKey");
        call.answer(Action::GetAuditPublicKey, async |_, _, _| {
            let der = self.public_key_der().await?;
            Ok(pb::GetAuditPublicKeyResponse {
                public_key_pem: public::spki_pem(&der),
                public_key_der: der,
                algorithm: "ECDSA_P256_SHA256".into(),
            })
        })
        .await
    }
}

impl AuditApi {
    async fn public_key_der(&self) -> Result<Vec<u8>, ApiError> {
        self.state
            .blocking(|m| {
                let material = m.backend().audit_public_key()?;
                public::spki_der(&material).map_err(KeyError::Internal)
            })
            .await
    }

    async fn public_key_pem(&self) -> Result<String, ApiError> {
        Ok(public::spki_pem(&self.public_key_der().await?))
    }
}

/// The proto answer of a verification; records hsmd made durable that are gone from
/// the end of the files are a problem too.
fn verify_response(
    report: audit_chain::ChainReport,
    written: audit::ChainHead,
) -> pb::VerifyAuditLogResponse {
    let mut problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    let mut resp = pb::VerifyAuditLogResponse {
        ok: report.ok(),
        records_checked: report.records,
        head_hash: report.head.hash.clone(),
        checkpoints_verified: report.checkpoints_verified,
        last_checkpoint_sequence: report.last_checkpoint.as_ref().map_or(0, |c| c.record_seq),
        unsigned_records: report.unsigned_tail,
        ..Default::default()
    };
    if let Some(bad) = report.problems.first() {
        resp.first_bad_sequence = bad.seq;
        resp.first_bad_line = bad.line;
        resp.problem = format!("{}: {}: {}", bad.kind.name(), bad.file, bad.detail);
    } else if report.head.sequence < written.sequence {
        resp.ok = false;
        resp.first_bad_sequence = report.head.sequence + 1;
        resp.first_bad_line = report.records + 1;
        resp.problem = format!(
            "log ends at record {} but hsmd wrote up to record {}: records were removed from the end",
            report.head.sequence, written.sequence
        );
        problems.push(resp.problem.clone());
    }
    resp.problems = problems;
    resp
}
