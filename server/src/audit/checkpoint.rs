//! Signed checkpoints: a record carrying the chain head (sequence and hash), signed by
//! the audit key in the token (ECDSA P-256 over SHA-256 of
//! [`Checkpoint::statement`](audit_chain::Checkpoint::statement)). Anyone with the audit
//! public key can then check, offline, that the records up to it are the ones hsmd
//! wrote.

use base64::Engine;

use super::record::{AuditEvent, CHECKPOINT_METHOD, Checkpoint, Outcome};
use audit_chain::walk::ChainHead;

/// Signs checkpoint statements. The token-backed implementation lives in `hsm`.
pub(crate) trait CheckpointSigner: Send + Sync + 'static {
    /// DER-encoded ECDSA P-256 signature over SHA-256 of `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String>;
}

/// The checkpoint record for `head`.
pub(crate) fn event(signer: &dyn CheckpointSigner, head: &ChainHead) -> Result<AuditEvent, String> {
    let der = signer.sign(&Checkpoint::statement(head.sequence, &head.hash))?;
    Ok(AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: crate::domain::SYSTEM_PRINCIPAL.into(),
        method: CHECKPOINT_METHOD.into(),
        outcome: Some(Outcome::Ok),
        status: "OK".into(),
        checkpoint: Some(Checkpoint {
            seq: head.sequence,
            hash: head.hash.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(der),
        }),
        ..Default::default()
    })
}
