//! The signing worker: takes the queued pushes in order and signs those an enabled
//! `event` policy covers, and runs the `scheduled` policies when their cron says.
//!
//! A push leaves the queue only once it is handled: signed (or found signed already by
//! the policy's key), out of scope, or refused for good (its key disabled, say: an audit
//! record says why). While the registry or the token is unavailable it stays queued and
//! is retried after an exponential backoff with jitter (1 s doubling to 5 minutes, each
//! delay drawn between half and all of it). A daemon killed after the webhook's 200 and
//! before signing finds the push in the queue at start; one killed after signing and
//! before dequeuing finds the signature made and adds none.
//!
//! Each handled push in scope is an audit record (principal `hsmd`, method
//! [`PUSH_METHOD`]) naming the policy, repository, tag, digest and key in its `note`,
//! with `signed=new` or `signed=existing`. Scheduled runs are records of method
//! [`SCHEDULED_METHOD`], one per image covered. A push whose record cannot be written is
//! retried (the retry finds the signature and writes `signed=existing`); one still
//! failing after [`MAX_AGE`] is given up with a failed record. Scheduled runs go in
//! tasks of their own (one at a time per policy), so pushes are not held up by them.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::domain::SYSTEM_PRINCIPAL;
use crate::keys::{KeyError, KeyRef};
use crate::store::{EventRow, Trigger};

use super::SigningError;
use super::cosign::Digest;
use super::policy::{Policy, algorithm_for};
use super::signer::{Image, Signer, SigningKey};

/// Method of the audit record of a push handled by the worker.
pub(crate) const PUSH_METHOD: &str = "hsmd/SignImageOnPush";
/// Method of the audit record of an image signed by a scheduled policy run.
pub(crate) const SCHEDULED_METHOD: &str = "hsmd/SignImageScheduled";

const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long a worker holds the pushes it takes: another worker on the same store leaves
/// them alone meanwhile; a worker that dies holding one leaves it due again after this.
const LEASE: Duration = Duration::from_secs(30);
/// How long a push is retried before it is given up (with a failed audit record).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How often scheduled policies are looked at (and the queue, if nobody wakes it).
const TICK: Duration = Duration::from_secs(5);

/// The delay before retry number `attempt` (0-based): exponential, capped, jittered.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let full = FIRST_RETRY
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(MAX_RETRY);
    let ms = full.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

/// Runs the worker until the task is dropped. `wake` is notified by the webhook after
/// it queues pushes.
pub(crate) async fn run(signer: Arc<Signer>, audit: AuditLog, wake: Arc<Notify>) {
    let clock = signer.clock().clone();
    let mut last_schedule_check = clock.now_utc();
    let running = Running::default();
    loop {
        drain(&signer, &audit).await;
        let now = clock.now_utc();
        run_schedules(&signer, &audit, &running, last_schedule_check, now).await;
        last_schedule_check = now;
        let next = signer
            .blocking(|m| Ok(m.store().next_registry_event_due()?))
            .await
            .ok()
            .flatten();
        let wait = next.map_or(TICK, |due| {
            Duration::from_millis((due - clock.now_ms()).clamp(0, TICK.as_millis() as i64) as u64)
        });
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Handles every queued push that is due.
async fn drain(signer: &Arc<Signer>, audit: &AuditLog) {
    loop {
        let (lease, now) = (LEASE.as_millis() as i64, signer.clock().now_ms());
        let due = signer
            .blocking(move |m| Ok(m.store().claim_registry_events(now, lease, 16)?))
            .await;
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "registry event queue not read");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        for ev in due {
            let result = handle(signer, audit, &ev).await;
            let seq = ev.seq;
            let stored = match result {
                Err(e) if e.is_transient() => {
                    let delay = backoff(ev.attempts as u32);
                    tracing::warn!(event = %ev.event_id, repository = %ev.repository, error = %e, retry_in_ms = delay.as_millis() as u64, "push not signed yet; will retry");
                    let due = signer.clock().now_ms() + delay.as_millis() as i64;
                    let text = e.to_string();
                    signer
                        .blocking(move |m| Ok(m.store().retry_registry_event(seq, due, &text)?))
                        .await
                }
                _ => {
                    signer
                        .blocking(move |m| Ok(m.store().finish_registry_event(seq)?))
                        .await
                }
            };
            if stored.is_err() {
                tracing::error!(event = %ev.event_id, "registry event queue not updated");
                return;
            }
        }
    }
}

/// The namespace's policy, compiled, if it is enabled with `trigger`.
async fn active_policy(
    signer: &Signer,
    namespace: &str,
    trigger: Trigger,
) -> Result<Option<Policy>, SigningError> {
    let ns = namespace.to_string();
    let row = signer
        .blocking(move |m| Ok(m.store().signing_policy(&ns)?))
        .await?;
    match row {
        Some(r) if r.enabled && r.trigger == trigger => Ok(Some(Policy::compile(r)?)),
        _ => Ok(None),
    }
}

/// The policy's key (the one it was created or updated with, even if an alias it was
/// named by has moved since), checked for image signing.
pub(crate) async fn policy_key(
    signer: &Signer,
    policy: &Policy,
) -> Result<SigningKey, SigningError> {
    let id = policy.row.key_id;
    signer
        .blocking(move |m| {
            let key = m.resolve(&KeyRef::Id(id))?;
            let algorithm = algorithm_for(m, &key)?;
            Ok(SigningKey { key, algorithm })
        })
        .await
}

/// Handles one push: signs it if an enabled event policy covers it.
async fn handle(signer: &Arc<Signer>, audit: &AuditLog, ev: &EventRow) -> Result<(), SigningError> {
    let namespace = ev.repository.split('/').next().unwrap_or_default();
    let Some(policy) = active_policy(signer, namespace, Trigger::Event).await? else {
        return Ok(());
    };
    if !policy.covers(&ev.repository, ev.tag.as_deref()) {
        return Ok(());
    }
    let image = Image {
        repository: ev.repository.clone(),
        digest: Digest::parse(&ev.digest)
            .map_err(|e| SigningError::InvalidArgument(e.to_string()))?,
        tag: ev.tag.clone(),
    };
    let result = match policy_key(signer, &policy).await {
        Ok(key) => signer
            .sign(&image, &key, &policy.row.name, &policy.row.domain)
            .await
            .map(|made| (key, made)),
        Err(e) => Err(e),
    };
    let age = Duration::from_millis((signer.clock().now_ms() - ev.received).max(0) as u64);
    if result.as_ref().is_err_and(SigningError::is_transient) && age < MAX_AGE {
        // Retried later; the record is written when it is handled.
        return result.map(|_| ());
    }
    if !record(
        audit,
        (SYSTEM_PRINCIPAL, PUSH_METHOD),
        &image,
        &policy,
        &result,
        Some(&ev.event_id),
    )
    .await
    {
        // No signature without its record: handled again, the retry writes it.
        return Err(KeyError::Unavailable("audit record not written".into()).into());
    }
    if result.is_err() && age >= MAX_AGE {
        tracing::error!(event = %ev.event_id, repository = %ev.repository, "push given up after {} h", MAX_AGE.as_secs() / 3600);
    }
    Ok(())
}

/// Writes the audit record of one image handled by a policy, for `by` (principal,
/// method); false if it could not be.
async fn record(
    audit: &AuditLog,
    (principal, method): (&str, &str),
    image: &Image,
    policy: &Policy,
    result: &Result<(SigningKey, (bool, String)), SigningError>,
    event_id: Option<&str>,
) -> bool {
    let mut event = AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: principal.into(),
        method: method.into(),
        ..Default::default()
    };
    match result {
        Ok((key, (made, payload))) => {
            image.describe(&mut event, &policy.row.name, key);
            Image::note_signed(&mut event, *made, payload);
            event.outcome = Some(Outcome::Ok);
            event.status = "OK".into();
        }
        Err(e) => {
            event.note = image.note(&policy.row.name);
            event.key_id = policy.row.key_id.to_string();
            event.outcome = Some(Outcome::Failed);
            event.status = e.reason().code_name().into();
            event.reason = e.reason().to_string();
        }
    }
    if let Some(id) = event_id {
        event.note.push_str(&format!(" event={id}"));
    }
    match audit.append(event).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, method, "audit record of an image signature not written");
            false
        }
    }
}

/// Namespaces whose scheduled run is under way.
type Running = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// Starts a run of each enabled scheduled policy whose cron fired in (`from`, `to`],
/// in a task of its own, unless its previous run is still going.
async fn run_schedules(
    signer: &Arc<Signer>,
    audit: &AuditLog,
    running: &Running,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) {
    if signer.registry().is_err() {
        return;
    }
    let Ok(rows) = signer.blocking(|m| Ok(m.store().signing_policies()?)).await else {
        return;
    };
    for row in rows {
        if !row.enabled || row.trigger != Trigger::Scheduled {
            continue;
        }
        let Ok(policy) = Policy::compile(row) else {
            continue;
        };
        let fired = policy
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(from))
            .is_some_and(|t| t <= to);
        let ns = policy.row.namespace.clone();
        if !fired
            || !running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ns.clone())
        {
            continue;
        }
        let (signer, audit, running) = (signer.clone(), audit.clone(), running.clone());
        tokio::spawn(async move {
            // One replica of a cluster runs each firing; the others skip it.
            let lock = format!("scheduled-run:{ns}");
            match signer
                .blocking(move |m| Ok(m.store().exclusive(&lock)?))
                .await
            {
                Ok(Some(_held)) => {
                    let by = (SYSTEM_PRINCIPAL, SCHEDULED_METHOD);
                    if let Err(e) = sign_all(&signer, &audit, &policy, by, None).await {
                        tracing::warn!(namespace = %ns, error = %e, "scheduled signing run failed");
                    }
                }
                Ok(None) => {
                    tracing::debug!(namespace = %ns, "another replica runs this scheduled signing run");
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "scheduled signing run skipped: no cluster lock");
                }
            }
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ns);
        });
    }
}

/// Signs every image of the policy's namespace that it covers, each an audit record
/// for `by` (principal, method); `progress`, if given, gets each image's outcome. Returns how many images were looked at.
pub(crate) async fn sign_all(
    signer: &Arc<Signer>,
    audit: &AuditLog,
    policy: &Policy,
    by: (&str, &str),
    progress: Option<&tokio::sync::mpsc::Sender<Progress>>,
) -> Result<usize, SigningError> {
    let key = policy_key(signer, policy).await?;
    let images = signer
        .images(&policy.row.namespace, |r, t| policy.covers(r, t))
        .await?;
    let total = images.len();
    for (i, image) in images.iter().enumerate() {
        let result = signer
            .sign(image, &key, &policy.row.name, &policy.row.domain)
            .await
            .map(|made| (key.clone(), made));
        record(audit, by, image, policy, &result, None).await;
        if let Some(tx) = progress {
            // Every message is delivered (a slow reader slows the run); one nobody
            // reads any more stops nothing.
            let _ = tx
                .send(Progress {
                    total,
                    done: i + 1,
                    image: image.clone(),
                    result: result
                        .as_ref()
                        .map(|(_, (made, _))| *made)
                        .map_err(|e| e.to_string()),
                })
                .await;
        }
    }
    Ok(total)
}

/// One image of a namespace run.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) total: usize,
    pub(crate) done: usize,
    pub(crate) image: Image,
    /// True: signed now; false: signed already; Err: why it could not be.
    pub(crate) result: Result<bool, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..40 {
            let full = FIRST_RETRY
                .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                .min(MAX_RETRY);
            let d = backoff(attempt);
            assert!(
                d <= full && d >= full / 2,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        assert!(backoff(0) <= Duration::from_secs(1));
        assert_eq!(backoff(30).max(MAX_RETRY), MAX_RETRY);
    }
}
