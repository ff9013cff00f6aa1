//! Background lifecycle work: start-up reconciliation of the token against the store,
//! and the sweep (deletions, expired imported material, due rotations, stale wrapping
//! keys), each change audited by the principal `hsmd`.

use std::time::Duration;

use super::SYSTEM_PRINCIPAL;
use crate::api::ApiState;
use crate::audit::{AuditEvent, Outcome};
use crate::keys::KeyManager;

/// Audit method of the start-up fix that destroys a half-made key's token objects.
pub(crate) const HALF_MADE_METHOD: &str = "hsmd/DestroyHalfMadeKey";

/// Start-up reconciliation of the token with the store: the report is logged, and each
/// half-made key it destroys gets an audit record.
pub(super) async fn reconcile(state: &ApiState) {
    let keys = state.keys.clone();
    match tokio::task::spawn_blocking(move || keys.reconcile()).await {
        Ok(Ok(r)) => {
            tracing::info!(
                matched = r.matched,
                foreign_objects = r.foreign_objects,
                destroyed = r.destroyed.len(),
                orphans = r.orphans.len(),
                missing = r.missing.len(),
                "token and store reconciled"
            );
            for id in &r.destroyed {
                tracing::warn!(object_id = %id, "destroyed the token objects of a CreateKey or RotateKey that hsmd died in the middle of (never answered, never recorded)");
                system_record(state, HALF_MADE_METHOD, *id, &Ok(Ok(()))).await;
            }
            for id in &r.orphans {
                tracing::warn!(key_id = %id, "token holds key objects with no live key in the store (left in place; inspect and remove by hand)");
            }
            for id in &r.missing {
                tracing::error!(key_id = %id, "store has a live key whose material is missing from the token");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "reconciliation failed"),
        Err(e) => tracing::error!(error = %e, "reconciliation task failed"),
    }
}

pub(super) async fn sweep_loop(state: ApiState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        sweep(&state).await;
    }
}

/// Destroys every key whose deletion date has passed, imported material whose
/// valid-to has passed (the key returns to PENDING_IMPORT), and rotates keys whose
/// automatic rotation is due, each with an audit record; then the wrapping keys of
/// superseded and expired import tokens, and those no import token names once seen for
/// a token lifetime.
pub(crate) async fn sweep(state: &ApiState) {
    // One replica at a time: the others skip this round. Each change below is
    // compare-and-set anyway, so a replica that dies mid-sweep leaves no half-done work
    // (the lock goes with its connection, and the next sweep finds what is left).
    let keys = state.keys.clone();
    let _alone = match tokio::task::spawn_blocking(move || {
        keys.store().exclusive("lifecycle-sweep")
    })
    .await
    {
        Ok(Ok(Some(guard))) => guard,
        Ok(Ok(None)) => return tracing::debug!("another replica is sweeping"),
        Ok(Err(e)) => return tracing::error!(error = %e, "lifecycle sweep failed"),
        Err(e) => return tracing::error!(error = %e, "lifecycle sweep task failed"),
    };
    let keys = state.keys.clone();
    let found = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::keys::KeyError>((
            keys.due_for_deletion()?,
            keys.expired_material()?,
            keys.due_for_rotation()?,
        ))
    })
    .await;
    let (due, expired, rotating) = match found {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return tracing::error!(error = %e, "lifecycle sweep failed"),
        Err(e) => return tracing::error!(error = %e, "lifecycle sweep task failed"),
    };
    for key in due {
        let done = "key destroyed after its deletion date";
        sweep_change(state, "hsmd/DestroyKey", key.id, done, move |m| {
            m.destroy(&key).map(drop)
        })
        .await;
    }
    for id in expired {
        let done = "imported key material destroyed at its valid-to; key is PENDING_IMPORT";
        sweep_change(state, "hsmd/ExpireKeyMaterial", id, done, move |m| {
            m.expire_material(id).map(drop)
        })
        .await;
    }
    for key in rotating {
        let done = "key rotated on its schedule";
        sweep_change(state, "hsmd/RotateKey", key.id, done, move |m| {
            m.rotate(&key).map(drop)
        })
        .await;
    }
    let keys = state.keys.clone();
    let wrapping = tokio::task::spawn_blocking(move || {
        keys.destroy_stale_wrapping_keys();
        keys.destroy_orphan_wrapping_keys()
    })
    .await;
    match wrapping {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "checking the token's wrapping keys failed"),
        Err(e) => tracing::error!(error = %e, "wrapping key sweep task failed"),
    }
}

/// One change the sweep makes on its own: runs `change` in the blocking pool, logs it
/// (`done` on success; a failure is retried at the next sweep) and audits it as `method`
/// by the principal `hsmd`.
async fn sweep_change(
    state: &ApiState,
    method: &'static str,
    id: uuid::Uuid,
    done: &'static str,
    change: impl FnOnce(&KeyManager) -> Result<(), crate::keys::KeyError> + Send + 'static,
) {
    let keys = state.keys.clone();
    let result = tokio::task::spawn_blocking(move || change(&keys)).await;
    match &result {
        Ok(Ok(())) => tracing::info!(key_id = %id, "{done}"),
        Ok(Err(e)) => {
            tracing::error!(key_id = %id, method, error = %e, "lifecycle change failed; retried next sweep")
        }
        Err(e) => tracing::error!(key_id = %id, method, error = %e, "lifecycle task failed"),
    }
    system_record(state, method, id, &result).await;
}

/// The audit record of a change hsmd made on its own (principal `hsmd`).
pub(super) async fn system_record(
    state: &ApiState,
    method: &str,
    id: uuid::Uuid,
    result: &Result<Result<(), crate::keys::KeyError>, tokio::task::JoinError>,
) {
    let (outcome, status, reason) = match result {
        Ok(Ok(())) => (Outcome::Ok, "OK", String::new()),
        Ok(Err(e)) => (Outcome::Failed, "INTERNAL", e.reason().to_string()),
        Err(_) => (Outcome::Failed, "INTERNAL", "INTERNAL".to_string()),
    };
    let event = AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: SYSTEM_PRINCIPAL.into(),
        method: method.into(),
        key_id: id.to_string(),
        outcome: Some(outcome),
        status: status.into(),
        reason,
        ..Default::default()
    };
    if let Err(e) = state.audit.append(event).await {
        tracing::error!(key_id = %id, method, error = %e, "audit record of a lifecycle change not written");
    }
}
