//! Kubernetes' KMS v2 plugin service (`v2.KeyManagementService`: Status, Encrypt,
//! Decrypt), served on a Unix socket for the API server, which encrypts every Secret's
//! data key (DEK) with it.
//!
//! - Encrypt seals the DEK with AES-256-GCM in the token under the configured key's
//!   current version: the ciphertext is hsmd's blob (it names key and version), made
//!   with a fixed AAD ([`PLUGIN_AAD`]) so that ciphertexts of the plugin and of the
//!   KeyService's Encrypt never stand in for each other.
//! - `key_id` is `<key uuid>:v<version>`: stable while the version is, new after
//!   RotateKey, which makes the API server re-wrap (Status reports the current one).
//! - Decrypt opens any version still there; a `key_id` that does not name the blob's
//!   key and version, a tampered blob or another key's blob is an error, never plaintext.
//! - Every call, Status included, is an audit record under the principal
//!   `kubernetes:<socket path>`, with the API server's `uid` as the request id; the
//!   policy must allow that principal Encrypt and Decrypt on the key (deny by default).

pub(crate) mod socket;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hsmd_proto::kms_v2 as k8s;
use hsmd_proto::kms_v2::key_management_service_server::KeyManagementService;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{ApiError, ApiState, Begun, Call, Identity};
use crate::auth::Action;
use crate::domain::record::KeyRecord;
use crate::domain::spec::EncryptionAlgorithm;
use crate::keys::{KeyError, blob};

/// The KMS plugin API version Status reports (EncryptionConfiguration `apiVersion: v2`).
pub(crate) const API_VERSION: &str = "v2";
/// Largest DEK Encrypt takes: Kubernetes sends 32 bytes, and at most 1 KiB.
pub(crate) const MAX_PLAINTEXT: usize = 1024;
/// AAD of every plugin ciphertext (domain separation from KeyService Encrypt).
pub(crate) const PLUGIN_AAD: &[u8] = b"hsmd kubernetes kms v2";
/// Annotation naming the plugin's ciphertext format (keys must be DNS names).
pub(crate) const FORMAT_ANNOTATION: &str = "version.hsmd.dev";
/// How long a successful health round trip through the token is trusted.
const HEALTH_TTL: Duration = Duration::from_secs(5);

/// `[kubernetes]`: where the plugin listens and which key it uses.
#[derive(Debug, Clone)]
pub(crate) struct KubernetesConfig {
    pub(crate) socket: PathBuf,
    /// Key id or `alias/NAME`.
    pub(crate) key: String,
    /// Group that owns the socket (mode 0660 then; 0600 without).
    pub(crate) group: Option<String>,
    /// Create an AES-256 key and the alias at start-up when the alias is missing
    /// (`hsmd dev --kms-socket` sets it).
    pub(crate) create_key: bool,
}

impl KubernetesConfig {
    /// The principal the API server's calls run as.
    pub(crate) fn principal(&self) -> String {
        format!("kubernetes:{}", self.socket.display())
    }
}

/// The KMS v2 service.
pub(crate) struct KmsPlugin {
    state: ApiState,
    key: String,
    who: Identity,
    /// When the last health round trip succeeded.
    healthy_at: Mutex<Option<Instant>>,
}

macro_rules! method {
    ($name:literal) => {
        concat!("/v2.KeyManagementService/", $name)
    };
}

/// `<key uuid>:v<version>`, the key_id the API server stores beside each DEK.
pub(crate) fn key_id_of(key: Uuid, version: u32) -> String {
    format!("{key}:v{version}")
}

/// Parses a key_id of [`key_id_of`]'s form.
pub(crate) fn parse_key_id(s: &str) -> Option<(Uuid, u32)> {
    let (id, v) = s.split_once(":v")?;
    let version: u32 = v.parse().ok().filter(|n| *n >= 1)?;
    Some((Uuid::parse_str(id).ok()?, version))
}

impl KmsPlugin {
    pub(crate) fn new(state: ApiState, cfg: &KubernetesConfig) -> Self {
        KmsPlugin {
            state,
            key: cfg.key.clone(),
            who: Identity {
                principal: Some(cfg.principal()),
                peer: format!("unix:{}", cfg.socket.display()),
                addr: None,
            },
            healthy_at: Mutex::new(None),
        }
    }

    /// Begins a call as the API server, with its uid as the request id when it is one
    /// a record can carry (1..64 characters of letters, digits and `-`).
    fn begin<R>(
        &self,
        req: Request<R>,
        method: &'static str,
        uid: impl Fn(&R) -> &str,
    ) -> Begun<'_, R> {
        let mut call = Call::with_identity(&self.who, method);
        let req = req.into_inner();
        let uid = uid(&req);
        if (1..=64).contains(&uid.len())
            && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            call.event.request_id = uid.to_string();
        }
        Begun::new(&self.state, call, req)
    }

    /// Seals a DEK under the key's current version; returns the blob and key_id.
    async fn seal(
        &self,
        call: &mut Call,
        grant: &super::Grant,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<(Vec<u8>, String), ApiError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KeyError::PlaintextTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
                hint: " (a Kubernetes data key is 32 bytes)",
            }
            .into());
        }
        self.state
            .with_key(call, grant, &self.key, move |m, key| {
                let (_, ct) = m.encrypt(
                    &key,
                    Some(EncryptionAlgorithm::SymmetricDefault),
                    &plaintext,
                    PLUGIN_AAD,
                )?;
                Ok((ct, key_id_of(key.id, key.current_version().version)))
            })
            .await
    }

    /// Opens a plugin blob with the key `named` (the blob's own key, or the configured
    /// one for the health probe).
    async fn open(
        &self,
        call: &mut Call,
        grant: &super::Grant,
        named: &str,
        blob: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        self.state
            .with_key(call, grant, named, move |m, key| {
                let alg = Some(EncryptionAlgorithm::SymmetricDefault);
                Ok(m.decrypt(&key, alg, &blob, PLUGIN_AAD)?.1)
            })
            .await
    }

    /// The configured key's current key_id, without touching the token.
    async fn current_key_id(
        &self,
        call: &mut Call,
        grant: &super::Grant,
    ) -> Result<String, ApiError> {
        let key: KeyRecord = self
            .state
            .with_key(call, grant, &self.key, |_, key| Ok(key))
            .await?;
        Ok(key_id_of(key.id, key.current_version().version))
    }

    /// A round trip through the token (seal and open 32 bytes), at most every
    /// [`HEALTH_TTL`]; the error says what failed.
    async fn health(&self, call: &mut Call, grant: &super::Grant) -> Result<(), ApiError> {
        let fresh = self
            .healthy_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < HEALTH_TTL);
        if fresh {
            return Ok(());
        }
        let probe = Zeroizing::new(vec![0x5a; 32]);
        let (blob, _) = self.seal(call, grant, probe.clone()).await?;
        let back = self.open(call, grant, &self.key, blob).await?;
        if back != probe {
            return Err(KeyError::Internal("health round trip returned other bytes".into()).into());
        }
        *self.healthy_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }
}

#[tonic::async_trait]
impl KeyManagementService for KmsPlugin {
    async fn status(
        &self,
        req: Request<k8s::StatusRequest>,
    ) -> Result<Response<k8s::StatusResponse>, Status> {
        // Status probes the Encrypt path: it needs what Encrypt needs.
        let call = self.begin(req, method!("Status"), |_| "");
        call.answer(Action::Encrypt, async |call, grant, _| {
            let healthz = match self.health(call, &grant).await {
                Ok(()) => "ok".to_string(),
                Err(e) => {
                    *self.healthy_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    format!("hsmd: {e}")
                }
            };
            let key_id = self.current_key_id(call, &grant).await?;
            call.event.note = format!("healthz {}", if healthz == "ok" { "ok" } else { "failing" });
            Ok(k8s::StatusResponse {
                version: API_VERSION.into(),
                healthz,
                key_id,
            })
        })
        .await
    }

    async fn encrypt(
        &self,
        req: Request<k8s::EncryptRequest>,
    ) -> Result<Response<k8s::EncryptResponse>, Status> {
        let call = self.begin(req, method!("Encrypt"), |r| &r.uid);
        let call = call.decode(|mut r| Zeroizing::new(std::mem::take(&mut r.plaintext)));
        call.answer(Action::Encrypt, async |call, grant, plaintext| {
            call.event.algorithm = EncryptionAlgorithm::SymmetricDefault.name().into();
            let (ciphertext, key_id) = self.seal(call, &grant, plaintext).await?;
            call.event.input_sha256 = crate::audit::record::input_hash(&ciphertext);
            Ok(k8s::EncryptResponse {
                ciphertext,
                key_id,
                annotations: [(FORMAT_ANNOTATION.to_string(), b"1".to_vec())].into(),
            })
        })
        .await
    }

    async fn decrypt(
        &self,
        req: Request<k8s::DecryptRequest>,
    ) -> Result<Response<k8s::DecryptResponse>, Status> {
        let call = self.begin(req, method!("Decrypt"), |r| &r.uid);
        let call = call.note_input(|r| &r.ciphertext);
        call.answer(Action::Decrypt, async |call, grant, r| {
            call.event.algorithm = EncryptionAlgorithm::SymmetricDefault.name().into();
            let parsed = blob::parse(&r.ciphertext).map_err(KeyError::InvalidCiphertext)?;
            let made_by = key_id_of(parsed.key_id, parsed.key_version);
            if parse_key_id(&r.key_id) != Some((parsed.key_id, parsed.key_version)) {
                call.note_key(&parsed.key_id.to_string(), None);
                return Err(KeyError::InvalidCiphertext(format!(
                    "key_id '{}' does not name the key version that made this ciphertext ({made_by})",
                    crate::keys::truncate(&r.key_id, 80)
                ))
                .into());
            }
            let named = parsed.key_id.to_string();
            let plaintext = self.open(call, &grant, &named, r.ciphertext.clone()).await?;
            Ok(k8s::DecryptResponse {
                plaintext: plaintext.to_vec(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_and_refuse_garbage() {
        let id = Uuid::new_v4();
        assert_eq!(parse_key_id(&key_id_of(id, 3)), Some((id, 3)));
        assert_eq!(parse_key_id(&format!("{id}:v0")), None);
        assert_eq!(parse_key_id(&format!("{id}")), None);
        assert_eq!(parse_key_id("alias/x:v1"), None);
        assert_eq!(parse_key_id(""), None);
    }
}
