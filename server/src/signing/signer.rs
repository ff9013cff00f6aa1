//! Signing and verifying one image in the registry, and removing a policy's signatures.
//!
//! Signing reads the digest's `.sig` manifest, and if no signature in it already
//! verifies with the key, has the token sign a new payload and writes the manifest back
//! with one layer more. The read-modify-write runs under one lock, so two pushes of the
//! same digest (two tags, a redelivered event, a manual sign) never both add a layer,
//! and never drop each other's; with replicas, under the digest's cluster-wide lock too
//! (an advisory lock in the shared store), so two replicas never do either.

use std::sync::Arc;

use crate::audit::AuditEvent;
use crate::clock::SharedClock;
use crate::domain::record::KeyRecord;
use crate::domain::spec::{MessageType, SigningAlgorithm};
use crate::keys::{KeyError, KeyManager};

use super::SigningError;
use super::cosign::{Digest, Payload, SignatureLayer};
use super::registry::{Payloads, Registry};

/// The key a signature is made or checked with.
#[derive(Debug, Clone)]
pub(crate) struct SigningKey {
    pub(crate) key: KeyRecord,
    pub(crate) algorithm: SigningAlgorithm,
}

/// One image: a manifest digest in a repository, and the tag it was named by (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Image {
    /// Full repository, `namespace/repo`.
    pub(crate) repository: String,
    pub(crate) digest: Digest,
    pub(crate) tag: Option<String>,
}

impl Image {
    /// What the audit record's `note` says of a signature of this image.
    pub(crate) fn note(&self, policy: &str) -> String {
        format!(
            "policy={policy} repository={} tag={} digest={}",
            self.repository,
            self.tag.as_deref().unwrap_or(""),
            self.digest
        )
    }

    /// Notes the image and key in an audit event.
    pub(crate) fn describe(&self, event: &mut AuditEvent, policy: &str, key: &SigningKey) {
        event.key_id = key.key.id.to_string();
        event.algorithm = key.algorithm.name().into();
        event.message_type = "COSIGN_SIMPLE_SIGNING".into();
        event.note = self.note(policy);
    }

    /// Notes in an audit event the outcome of [`Signer::sign`]: the signed payload's
    /// SHA-256 as the input hash, and whether the signature is new.
    pub(crate) fn note_signed(event: &mut AuditEvent, made: bool, payload_digest: &str) {
        event.input_sha256 = payload_digest
            .strip_prefix("sha256:")
            .unwrap_or(payload_digest)
            .to_string();
        event.note.push_str(if made {
            " signed=new"
        } else {
            " signed=existing"
        });
    }
}

/// One signature found in a `.sig` manifest, and what checking it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) payload_digest: String,
    pub(crate) valid: bool,
    /// Why it is not valid (empty when valid).
    pub(crate) reason: String,
    /// The policy its payload names, if any.
    pub(crate) policy: String,
}

/// Signs and verifies images with keys of the token.
pub(crate) struct Signer {
    keys: Arc<KeyManager>,
    registry: Option<Registry>,
    /// Held across each read-modify-write of a `.sig` manifest.
    lock: tokio::sync::Mutex<()>,
}

impl Signer {
    pub(crate) fn new(keys: Arc<KeyManager>, registry: Option<Registry>) -> Signer {
        Signer {
            keys,
            registry,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The daemon's clock (the key manager's).
    pub(crate) fn clock(&self) -> &SharedClock {
        self.keys.clock()
    }

    /// The registry, or REGISTRY_NOT_CONFIGURED.
    pub(crate) fn registry(&self) -> Result<&Registry, SigningError> {
        self.registry
            .as_ref()
            .ok_or(SigningError::RegistryNotConfigured)
    }

    /// Holds the cluster-wide lock of one digest's signatures while the result lives
    /// (one node: nothing to wait for).
    async fn digest_lock(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<crate::store::Exclusive, SigningError> {
        let name = format!("image-signatures:{repository}@{digest}");
        self.blocking(move |m| Ok(m.store().exclusive_wait(&name)?))
            .await
    }

    /// Runs `f` on the key manager in the blocking pool (it blocks on SQLite and
    /// PKCS#11): the one hop every signing step takes for the store and the token.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyManager) -> Result<T, SigningError> + Send + 'static,
    ) -> Result<T, SigningError> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || f(&keys))
            .await
            .map_err(|e| KeyError::Internal(format!("blocking task: {e}")))?
    }

    /// Signs `image` with `key` under `policy` unless a signature by that key already
    /// vouches for its digest; returns true if a signature was added, and the digest of
    /// the payload signed (or found).
    pub(crate) async fn sign(
        &self,
        image: &Image,
        key: &SigningKey,
        policy: &str,
        domain: &str,
    ) -> Result<(bool, String), SigningError> {
        let registry = self.registry()?;
        let _guard = self.lock.lock().await;
        let _cluster = self.digest_lock(&image.repository, &image.digest).await?;
        let (mut set, payloads) = registry
            .signatures(&image.repository, &image.digest)
            .await?;
        for layer in set.signatures() {
            let check = self.check(&image.digest, key, layer, &payloads).await?;
            if check.valid {
                return Ok((false, check.payload_digest));
            }
        }
        // RFC 3339 to the second, as the key manager's clock keeps time.
        let time = time::OffsetDateTime::from_unix_timestamp(self.keys.now())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let reference = format!("{domain}/{}", image.repository);
        let payload = Payload::new(&reference, &image.digest, policy, &time).to_bytes();
        let (k, p) = (key.clone(), payload.clone());
        let signature = self
            .blocking(move |m| Ok(m.sign(&k.key, k.algorithm, MessageType::Raw, &p)?))
            .await?;
        let layer = SignatureLayer::new(&payload, &signature);
        let payload_digest = layer.digest.clone();
        set.push(layer);
        registry
            .put_signatures(
                &image.repository,
                &image.digest,
                &set,
                &[(payload_digest.clone(), payload)],
            )
            .await?;
        Ok((true, payload_digest.to_string()))
    }

    /// Checks every signature of `image` against `key`.
    pub(crate) async fn verify(
        &self,
        image: &Image,
        key: &SigningKey,
    ) -> Result<Vec<Check>, SigningError> {
        let (set, payloads) = self
            .registry()?
            .signatures(&image.repository, &image.digest)
            .await?;
        let mut out = Vec::new();
        for layer in set.signatures() {
            out.push(self.check(&image.digest, key, layer, &payloads).await?);
        }
        Ok(out)
    }

    /// Checks one signature layer: its payload names `digest`, and its signature over
    /// the payload bytes verifies with `key`.
    async fn check(
        &self,
        digest: &Digest,
        key: &SigningKey,
        layer: &SignatureLayer,
        payloads: &Payloads,
    ) -> Result<Check, SigningError> {
        let mut check = Check {
            payload_digest: layer.digest.to_string(),
            valid: false,
            reason: String::new(),
            policy: String::new(),
        };
        let Some(payload) = payloads.get(&layer.digest) else {
            check.reason = "the payload blob was not read".into();
            return Ok(check);
        };
        let parsed = match Payload::parse(payload) {
            Ok(p) => p,
            Err(e) => {
                check.reason = e.to_string();
                return Ok(check);
            }
        };
        check.policy = parsed.policy().unwrap_or_default().to_string();
        if parsed.digest() != digest.as_str() {
            check.reason = format!("the payload names {}, not this image", parsed.digest());
            return Ok(check);
        }
        let Some(signature) = layer.signature_bytes() else {
            check.reason = "the signature annotation is not base64".into();
            return Ok(check);
        };
        let (k, p) = (key.clone(), payload.to_vec());
        let ok = self
            .blocking(move |m| {
                Ok(m.verify(&k.key, k.algorithm, MessageType::Raw, &p, &signature)?)
            })
            .await?;
        if ok {
            check.valid = true;
        } else {
            check.reason = format!("the signature does not verify with key {}", key.key.id);
        }
        Ok(check)
    }

    /// Removes, from every `.sig` manifest of the namespace's repositories, the
    /// signatures whose payload names `policy` (only a policy's own signatures do; a
    /// signature made with an explicitly named key names none). Everything else in the
    /// manifest stays; a manifest left with no layer is deleted; one the policy never
    /// signed is not rewritten. Returns how many signatures were removed.
    pub(crate) async fn remove_policy_signatures(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Result<u32, SigningError> {
        let registry = self.registry()?;
        let mut removed = 0;
        for repository in registry.repositories(namespace).await? {
            for tag in registry.tags(&repository).await? {
                let Some(digest) = signed_digest(&tag) else {
                    continue;
                };
                let _guard = self.lock.lock().await;
                let _cluster = self.digest_lock(&repository, &digest).await?;
                let (mut set, payloads) = registry.signatures(&repository, &digest).await?;
                let named = |l: &SignatureLayer| {
                    payloads
                        .get(&l.digest)
                        .and_then(|p| Payload::parse(p).ok())
                        .is_some_and(|p| p.policy() == Some(policy))
                };
                let n = set.remove(named);
                if n == 0 {
                    continue;
                }
                removed += n as u32;
                if set.is_empty() {
                    registry.delete_signatures(&repository, &digest).await?;
                } else {
                    registry
                        .put_signatures(&repository, &digest, &set, &[])
                        .await?;
                }
            }
        }
        Ok(removed)
    }

    /// Every tagged image of the namespace's repositories that `covers` accepts
    /// (signature tags left out), one entry per tag.
    pub(crate) async fn images(
        &self,
        namespace: &str,
        covers: impl Fn(&str, Option<&str>) -> bool,
    ) -> Result<Vec<Image>, SigningError> {
        let registry = self.registry()?;
        let mut out = Vec::new();
        for repository in registry.repositories(namespace).await? {
            for tag in registry.tags(&repository).await? {
                if super::events::is_cosign_artifact_tag(&tag) || !covers(&repository, Some(&tag)) {
                    continue;
                }
                let digest = match registry.resolve(&repository, &tag).await {
                    Ok(d) => d,
                    // Deleted between the listing and now.
                    Err(super::registry::RegistryError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                out.push(Image {
                    repository: repository.clone(),
                    digest,
                    tag: Some(tag),
                });
            }
        }
        Ok(out)
    }
}

/// The image digest a `sha256-<hex>.sig` tag signs.
fn signed_digest(tag: &str) -> Option<Digest> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_tags_name_their_digest() {
        let d = Digest::parse(&format!("sha256:{}", "0f".repeat(32))).unwrap();
        assert_eq!(signed_digest(&d.signature_tag()), Some(d));
        assert_eq!(signed_digest("v1"), None);
        assert_eq!(signed_digest("sha256-12.sig"), None);
        assert_eq!(
            signed_digest(&format!("sha256-{}.att", "0f".repeat(32))),
            None
        );
    }
}
