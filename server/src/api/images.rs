//! SigningPolicyService and ImageSigningService: signature policies per registry
//! namespace, and signing and verifying images in the configured registry. The rules
//! are `signing`'s; here requests are decoded, authorized (binding a key to a policy, or
//! signing with a named key, also needs Sign on that key) and answered.

use std::pin::Pin;

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::image_signing_service_server::ImageSigningService;
use hsmd_proto::v1::signing_policy_service_server::SigningPolicyService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert::ts;
use super::{ApiError, ApiState, Call, Grant};
use crate::auth::Action;
use crate::keys::{KeyManager, KeyRef};
use crate::signing::SigningError;
use crate::signing::policy::{self, Policy, PolicySpec, algorithm_of};
use crate::signing::reference::ImageRef;
use crate::signing::signer::{Image, SigningKey};
use crate::signing::worker;
use crate::store::{PolicyRow, Trigger};

macro_rules! policy_method {
    ($name:literal) => {
        concat!("/hsmd.v1.SigningPolicyService/", $name)
    };
}

macro_rules! image_method {
    ($name:literal) => {
        concat!("/hsmd.v1.ImageSigningService/", $name)
    };
}

/// Both services.
pub(crate) struct ImagesApi {
    state: ApiState,
}

impl ImagesApi {
    pub(crate) fn new(state: ApiState) -> Self {
        ImagesApi { state }
    }

    /// Runs `f` in the blocking pool (it reads the store, and may resolve a key).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyManager) -> Result<T, SigningError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.state.signer.blocking(f).await.map_err(ApiError::from)
    }

    /// The registry host, if one is configured.
    fn registry_host(&self) -> Option<String> {
        self.state
            .signer
            .registry()
            .ok()
            .map(|r| r.host().to_string())
    }

    /// The policy as answered, with the algorithm its key's spec implies.
    async fn policy_pb(&self, row: PolicyRow) -> Result<pb::SignaturePolicy, ApiError> {
        let id = row.key_id;
        let algorithm = self
            .blocking(move |m| {
                Ok(m.resolve(&KeyRef::Id(id))
                    .ok()
                    .and_then(|k| algorithm_of(&k).ok()))
            })
            .await?;
        Ok(policy_to_pb(row, algorithm.map_or("", |a| a.name())))
    }

    /// Checks `spec` and its key for `namespace`; the caller must be allowed to Sign
    /// with that key.
    async fn prepared(
        &self,
        call: &mut Call,
        grant: &Grant,
        namespace: String,
        spec: PolicySpec,
        created: Option<i64>,
        version: i64,
    ) -> Result<Policy, ApiError> {
        let named = spec.key_ref.clone();
        let host = self.registry_host();
        let (policy, key) = self
            .blocking(move |m| {
                policy::prepare(m, &namespace, spec, host.as_deref(), created, version)
            })
            .await
            .inspect_err(|_| call.note_key(&named, None))?;
        call.note_key(&named, Some(key.id));
        grant.check_key_for(Action::Sign, &key)?;
        Ok(policy)
    }

    /// The key an image is signed or checked with: the one named, or the namespace's
    /// policy key; and the policy, if the namespace has one.
    async fn image_key(
        &self,
        call: &mut Call,
        grant: &Grant,
        image: &ImageRef,
        named: &str,
        signing: bool,
    ) -> Result<(SigningKey, Option<PolicyRow>), ApiError> {
        let ns = image.namespace().to_string();
        let row = self
            .blocking(move |m| Ok(m.store().signing_policy(&ns)?))
            .await?;
        let key_ref = match (named.is_empty(), &row) {
            (false, _) => named.to_string(),
            (true, Some(r)) => r.key_id.to_string(),
            (true, None) => {
                return Err(SigningError::PolicyNotFound(image.namespace().to_string()).into());
            }
        };
        let kr = key_ref.clone();
        let key = self
            .blocking(move |m| {
                let key = m.resolve(&KeyRef::parse(&kr)?)?;
                let algorithm = if signing {
                    policy::algorithm_for(m, &key)?
                } else {
                    algorithm_of(&key)?
                };
                Ok(SigningKey { key, algorithm })
            })
            .await
            .inspect_err(|_| call.note_key(&key_ref, None))?;
        call.note_key(&key_ref, Some(key.key.id));
        call.event.algorithm = key.algorithm.name().into();
        if !named.is_empty() {
            let action = if signing {
                Action::Sign
            } else {
                Action::Verify
            };
            grant.check_key_for(action, &key.key)?;
        }
        Ok((key, row))
    }

    /// The image a reference names, in the configured registry, with its digest.
    async fn image(&self, reference: &str) -> Result<(ImageRef, Image), ApiError> {
        let r = ImageRef::parse(reference)?;
        let registry = self.state.signer.registry()?;
        if let Some(host) = &r.host
            && host != registry.host()
        {
            return Err(SigningError::Reference(format!(
                "the reference names registry {host}; hsmd signs in {}",
                registry.host()
            ))
            .into());
        }
        let digest = match (&r.digest, &r.tag) {
            (Some(d), _) => registry.resolve(&r.repository, d.as_str()).await,
            (None, Some(t)) => registry.resolve(&r.repository, t).await,
            (None, None) => unreachable!("ImageRef::parse requires a tag or a digest"),
        }
        .map_err(SigningError::from)?;
        let image = Image {
            repository: r.repository.clone(),
            digest,
            tag: r.tag.clone(),
        };
        Ok((r, image))
    }
}

fn trigger_from_pb(v: i32) -> Result<Option<Trigger>, SigningError> {
    use pb::SignatureTrigger as P;
    match P::try_from(v) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Event) => Ok(Some(Trigger::Event)),
        Ok(P::Manual) => Ok(Some(Trigger::Manual)),
        Ok(P::Scheduled) => Ok(Some(Trigger::Scheduled)),
        Err(_) => Err(SigningError::InvalidArgument(format!(
            "trigger value {v} is not one of EVENT, MANUAL, SCHEDULED"
        ))),
    }
}

fn trigger_to_pb(t: Trigger) -> i32 {
    use pb::SignatureTrigger as P;
    match t {
        Trigger::Event => P::Event,
        Trigger::Manual => P::Manual,
        Trigger::Scheduled => P::Scheduled,
    }
    .into()
}

fn policy_to_pb(row: PolicyRow, algorithm: &str) -> pb::SignaturePolicy {
    pb::SignaturePolicy {
        namespace: row.namespace,
        name: row.name,
        description: row.description,
        enabled: row.enabled,
        key: row.key_ref,
        key_id: row.key_id.to_string(),
        algorithm: algorithm.to_string(),
        domain: row.domain,
        repositories: row.repositories,
        tags: row.tags,
        untagged: row.untagged,
        trigger: trigger_to_pb(row.trigger),
        cron: row.cron.unwrap_or_default(),
        create_time: Some(ts(row.create_time)),
        update_time: Some(ts(row.update_time)),
    }
}

/// Applies an update request to the stored policy's spec.
fn updated(
    row: &PolicyRow,
    r: pb::UpdateSignaturePolicyRequest,
) -> Result<PolicySpec, SigningError> {
    let mut spec = PolicySpec::of(row);
    if let Some(v) = r.name {
        spec.name = v;
    }
    if let Some(v) = r.description {
        spec.description = v;
    }
    if let Some(v) = r.enabled {
        spec.enabled = v;
    }
    if let Some(v) = r.key_id {
        spec.key_ref = v;
    }
    if let Some(v) = r.domain {
        spec.domain = Some(v);
    }
    if let Some(v) = r.repositories {
        spec.repositories = v.patterns;
    }
    if let Some(v) = r.tags {
        spec.tags = v.patterns;
    }
    if let Some(v) = r.untagged {
        spec.untagged = v;
    }
    if let Some(t) = trigger_from_pb(r.trigger)? {
        spec.trigger = t;
        if t != Trigger::Scheduled && r.cron.is_none() {
            spec.cron = None;
        }
    }
    if let Some(c) = r.cron {
        spec.cron = Some(c);
    }
    Ok(spec)
}

fn note_namespace(call: &mut Call, namespace: &str) {
    call.event.note = format!("namespace={}", crate::keys::truncate(namespace, 80));
}

#[tonic::async_trait]
impl SigningPolicyService for ImagesApi {
    async fn create_signature_policy(
        &self,
        req: Request<pb::CreateSignaturePolicyRequest>,
    ) -> Result<Response<pb::CreateSignaturePolicyResponse>, Status> {
        let call = self
            .state
            .call(req, policy_method!("CreateSignaturePolicy"));
        call.answer(Action::CreateSignaturePolicy, async |call, grant, r| {
            note_namespace(call, &r.namespace);
            let spec = PolicySpec {
                name: r.name,
                description: r.description,
                enabled: !r.disabled,
                key_ref: r.key_id,
                domain: Some(r.domain),
                repositories: r.repositories,
                tags: r.tags,
                untagged: r.untagged,
                trigger: trigger_from_pb(r.trigger)?.unwrap_or(Trigger::Event),
                cron: Some(r.cron),
            };
            let policy = self
                .prepared(call, &grant, r.namespace, spec, None, 1)
                .await?;
            let row = policy.row.clone();
            self.blocking(move |m| policy::insert(m, &row)).await?;
            Ok(pb::CreateSignaturePolicyResponse {
                policy: Some(self.policy_pb(policy.row).await?),
            })
        })
        .await
    }

    async fn describe_signature_policy(
        &self,
        req: Request<pb::DescribeSignaturePolicyRequest>,
    ) -> Result<Response<pb::DescribeSignaturePolicyResponse>, Status> {
        let call = self
            .state
            .call(req, policy_method!("DescribeSignaturePolicy"));
        call.answer(Action::DescribeSignaturePolicy, async |call, _, r| {
            note_namespace(call, &r.namespace);
            let row = self.blocking(move |m| policy::get(m, &r.namespace)).await?;
            call.event.key_id = row.key_id.to_string();
            Ok(pb::DescribeSignaturePolicyResponse {
                policy: Some(self.policy_pb(row).await?),
            })
        })
        .await
    }

    async fn list_signature_policies(
        &self,
        req: Request<pb::ListSignaturePoliciesRequest>,
    ) -> Result<Response<pb::ListSignaturePoliciesResponse>, Status> {
        let call = self
            .state
            .call(req, policy_method!("ListSignaturePolicies"));
        call.answer(Action::ListSignaturePolicies, async |_, _, r| {
            let rows = self
                .blocking(move |m| {
                    if r.namespace.is_empty() {
                        Ok(m.store().signing_policies()?)
                    } else {
                        policy::check_namespace(&r.namespace)?;
                        Ok(m.store()
                            .signing_policy(&r.namespace)?
                            .into_iter()
                            .collect())
                    }
                })
                .await?;
            let mut policies = Vec::with_capacity(rows.len());
            for row in rows {
                policies.push(self.policy_pb(row).await?);
            }
            Ok(pb::ListSignaturePoliciesResponse { policies })
        })
        .await
    }

    async fn update_signature_policy(
        &self,
        req: Request<pb::UpdateSignaturePolicyRequest>,
    ) -> Result<Response<pb::UpdateSignaturePolicyResponse>, Status> {
        let call = self
            .state
            .call(req, policy_method!("UpdateSignaturePolicy"));
        call.answer(Action::UpdateSignaturePolicy, async |call, grant, r| {
            note_namespace(call, &r.namespace);
            let ns = r.namespace.clone();
            let row = self.blocking(move |m| policy::get(m, &ns)).await?;
            let spec = updated(&row, r)?;
            let policy = self
                .prepared(
                    call,
                    &grant,
                    row.namespace.clone(),
                    spec,
                    Some(row.create_time),
                    row.version,
                )
                .await?;
            let stored = self
                .blocking(move |m| policy::replace(m, &policy.row))
                .await?;
            Ok(pb::UpdateSignaturePolicyResponse {
                policy: Some(self.policy_pb(stored).await?),
            })
        })
        .await
    }

    async fn delete_signature_policy(
        &self,
        req: Request<pb::DeleteSignaturePolicyRequest>,
    ) -> Result<Response<pb::DeleteSignaturePolicyResponse>, Status> {
        let call = self
            .state
            .call(req, policy_method!("DeleteSignaturePolicy"));
        call.answer(Action::DeleteSignaturePolicy, async |call, _, r| {
            note_namespace(call, &r.namespace);
            self.state.signer.registry()?;
            let row = self.blocking(move |m| policy::get(m, &r.namespace)).await?;
            call.event.key_id = row.key_id.to_string();
            // Disabled first (compare-and-set), so nothing signs under it while its
            // signatures are removed; if the registry fails midway the policy stays,
            // disabled, and deleting it again finishes the job.
            let row = if row.enabled {
                let off = PolicyRow {
                    enabled: false,
                    ..row
                };
                self.blocking(move |m| policy::replace(m, &off)).await?
            } else {
                row
            };
            let removed = self
                .state
                .signer
                .remove_policy_signatures(&row.namespace, &row.name)
                .await?;
            let gone = row.clone();
            self.blocking(move |m| policy::remove(m, &gone)).await?;
            call.event
                .note
                .push_str(&format!(" signatures_removed={removed}"));
            Ok(pb::DeleteSignaturePolicyResponse {
                policy: Some(self.policy_pb(row).await?),
                signatures_removed: removed,
            })
        })
        .await
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::SignNamespaceProgress, Status>> + Send>>;

#[tonic::async_trait]
impl ImageSigningService for ImagesApi {
    async fn sign_image(
        &self,
        req: Request<pb::SignImageRequest>,
    ) -> Result<Response<pb::SignImageResponse>, Status> {
        let call = self.state.call(req, image_method!("SignImage"));
        call.answer(Action::SignImage, async |call, grant, r| {
            call.event.note = format!("reference={}", crate::keys::truncate(&r.reference, 200));
            let (reference, image) = self.image(&r.reference).await?;
            let (key, row) = self
                .image_key(call, &grant, &reference, &r.key_id, true)
                .await?;
            let registry_host = self.registry_host().unwrap_or_default();
            let (policy, domain) = match (&row, r.key_id.is_empty()) {
                // With the policy's key: only what the policy would sign.
                (Some(p), true) => {
                    let compiled = Policy::compile(p.clone())?;
                    if !p.enabled {
                        return Err(SigningError::PolicyDisabled(p.namespace.clone()).into());
                    }
                    if !compiled.covers(&image.repository, image.tag.as_deref()) {
                        return Err(SigningError::OutOfScope(r.reference.clone()).into());
                    }
                    (p.name.clone(), p.domain.clone())
                }
                // With a key the caller named (and may Sign with): for no policy.
                (Some(p), false) => (String::new(), p.domain.clone()),
                (None, _) => (String::new(), registry_host),
            };
            image.describe(&mut call.event, &policy, &key);
            let (made, payload) = self
                .state
                .signer
                .sign(&image, &key, &policy, &domain)
                .await?;
            Image::note_signed(&mut call.event, made, &payload);
            Ok(pb::SignImageResponse {
                repository: image.repository,
                digest: image.digest.to_string(),
                key_id: key.key.id.to_string(),
                algorithm: key.algorithm.name().to_string(),
                signed: made,
                policy,
            })
        })
        .await
    }

    type SignNamespaceStream = ProgressStream;

    async fn sign_namespace(
        &self,
        req: Request<pb::SignNamespaceRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let call = self.state.call(req, image_method!("SignNamespace"));
        call.answer(Action::SignNamespace, async |call, grant, r| {
            note_namespace(call, &r.namespace);
            self.state.signer.registry()?;
            let row = self.blocking(move |m| policy::get(m, &r.namespace)).await?;
            call.event.key_id = row.key_id.to_string();
            let policy = Policy::compile(row).map_err(ApiError::from)?;
            // Checked now, so a disabled key is this call's error, not the stream's.
            worker::policy_key(&self.state.signer, &policy).await?;
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<pb::SignNamespaceProgress, Status>>(64);
            let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel::<worker::Progress>(64);
            let (signer, audit) = (self.state.signer.clone(), self.state.audit.clone());
            let principal = grant.principal().to_string();
            tokio::spawn(async move {
                let run = async move {
                    let by = (principal.as_str(), image_method!("SignNamespace"));
                    worker::sign_all(&signer, &audit, &policy, by, Some(&progress_tx)).await
                };
                let forward = async {
                    while let Some(p) = progress_rx.recv().await {
                        let (signed, error) = match p.result {
                            Ok(made) => (made, String::new()),
                            Err(e) => (false, e),
                        };
                        let msg = pb::SignNamespaceProgress {
                            total: p.total as u32,
                            done: p.done as u32,
                            repository: p.image.repository,
                            tag: p.image.tag.unwrap_or_default(),
                            digest: p.image.digest.to_string(),
                            signed,
                            error,
                        };
                        // A reader gone away stops nothing: the run goes on, audited.
                        let _ = tx.send(Ok(msg)).await;
                    }
                };
                // The run's error, if any, comes after its last progress message.
                let (result, ()) = tokio::join!(run, forward);
                if let Err(e) = result {
                    let _ = tx.send(Err(ApiError::from(e).to_status())).await;
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as ProgressStream)
        })
        .await
    }

    async fn verify_image(
        &self,
        req: Request<pb::VerifyImageRequest>,
    ) -> Result<Response<pb::VerifyImageResponse>, Status> {
        let call = self.state.call(req, image_method!("VerifyImage"));
        call.answer(Action::VerifyImage, async |call, grant, r| {
            call.event.note = format!("reference={}", crate::keys::truncate(&r.reference, 200));
            let (reference, image) = self.image(&r.reference).await?;
            let (key, row) = self
                .image_key(call, &grant, &reference, &r.key_id, false)
                .await?;
            image.describe(
                &mut call.event,
                row.as_ref().map_or("", |p| p.name.as_str()),
                &key,
            );
            let checks = self.state.signer.verify(&image, &key).await?;
            use pb::ImageSignatureStatus as S;
            let status = if checks.iter().any(|c| c.valid) {
                S::ImageSigned
            } else if checks.is_empty() {
                S::ImageUnsigned
            } else {
                S::ImageSignatureInvalid
            };
            call.event.note.push_str(&format!(
                " status={}",
                status.as_str_name().to_ascii_lowercase()
            ));
            Ok(pb::VerifyImageResponse {
                repository: image.repository,
                digest: image.digest.to_string(),
                status: status.into(),
                signatures: checks
                    .into_iter()
                    .map(|c| pb::ImageSignature {
                        key_id: key.key.id.to_string(),
                        valid: c.valid,
                        reason: c.reason,
                        policy: c.policy,
                        payload_digest: c.payload_digest,
                    })
                    .collect(),
            })
        })
        .await
    }
}
