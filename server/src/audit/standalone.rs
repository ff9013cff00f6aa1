//! hsmd's audit writer without the daemon, for `hsmd-bench audit`: the same thread,
//! group commit, checkpoints and rotation as the daemon's log, with checkpoints signed by
//! a software P-256 key instead of the token's audit key (the bench has no token; the
//! signature format and statement are the same, so `hsmctl audit verify` checks them).

use std::path::Path;
use std::sync::Arc;

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};

use super::checkpoint::CheckpointSigner;
use super::{AuditConfig, AuditLog};
use crate::clock::SystemClock;
pub use audit_chain::{AuditEvent, Outcome};

/// Signs checkpoints in software (bench only; hsmd signs with the key in its token).
struct SoftwareSigner(SigningKey);

impl CheckpointSigner for SoftwareSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let sig: Signature = self.0.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// An audit log written by hsmd's own writer thread. Cheap to clone.
#[derive(Clone)]
pub struct StandaloneLog {
    log: AuditLog,
}

impl StandaloneLog {
    /// Opens (or continues) the log at `path` with the daemon's defaults (a checkpoint
    /// every 1000 records or 60 s, rotation at 64 MiB) and a fresh software checkpoint
    /// key; returns the log and that key's public half as PEM, for `audit verify`.
    pub fn open(path: &Path) -> Result<(Self, String), String> {
        // 256 random bits from two v4 UUIDs (uuid's getrandom; 244 of them random).
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let key = SigningKey::from_bytes(&bytes.into()).map_err(|e| e.to_string())?;
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let signer: Arc<dyn CheckpointSigner> = Arc::new(SoftwareSigner(key));
        let cfg = AuditConfig::at(path.to_path_buf());
        let log = AuditLog::open_observed(
            &cfg,
            Some(signer),
            SystemClock::shared(),
            Default::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok((StandaloneLog { log }, pem))
    }

    /// Appends an event and waits until it is durable (group commit with every event
    /// queued meanwhile); returns its sequence number.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, String> {
        self.log.append(event).await.map_err(|e| e.to_string())
    }

    /// Seals the log with a checkpoint and stops the writer thread.
    pub async fn close(&self) -> Result<u64, String> {
        let head = self.log.close().await.map_err(|e| e.to_string())?;
        Ok(head.sequence)
    }
}
