//! Typed calls for container image signing: the signature policies of registry
//! namespaces (SigningPolicyService), and signing and verifying images
//! (ImageSigningService).
//!
//! They retry as every typed call does (RESOURCE_EXHAUSTED and UNAVAILABLE only, which
//! takes in REGISTRY_UNAVAILABLE). Signing is idempotent (a digest already signed by the
//! key gets no second signature), so a retried SignImage or SignNamespace is harmless.
//! A retried create or delete whose first try did succeed (its answer lost) is refused
//! with ALREADY_EXISTS/POLICY_EXISTS or NOT_FOUND/POLICY_NOT_FOUND: describe the policy
//! to see where it stands. ABORTED/POLICY_CHANGED (another call changed the policy
//! meanwhile) is not retried: read the policy again before changing it.

use tonic::Streaming;

use crate::calls::retried;
use crate::client::Client;
use crate::error::ClientError;
use crate::v1::{
    CreateSignaturePolicyRequest, DeleteSignaturePolicyRequest, DeleteSignaturePolicyResponse,
    DescribeSignaturePolicyRequest, ListSignaturePoliciesRequest, SignImageRequest,
    SignImageResponse, SignNamespaceProgress, SignNamespaceRequest, SignaturePolicy,
    UpdateSignaturePolicyRequest, VerifyImageRequest, VerifyImageResponse,
};

/// The policy of an answer, or the error naming the missing field.
fn policy_of(
    policy: Option<SignaturePolicy>,
    what: &'static str,
) -> Result<SignaturePolicy, ClientError> {
    policy.ok_or(ClientError::MissingField(what))
}

impl Client {
    /// Creates a namespace's signature policy (one per namespace) and returns it, with
    /// the key's UUID and the signing algorithm filled in. `key_id` must name an ENABLED
    /// SIGN_VERIFY key of spec RSA_2048/3072/4096, EC_P256 or EC_P384.
    pub async fn create_signature_policy(
        &self,
        req: CreateSignaturePolicyRequest,
    ) -> Result<SignaturePolicy, ClientError> {
        let resp = retried!(
            self,
            "CreateSignaturePolicy",
            policies,
            create_signature_policy,
            req
        );
        policy_of(resp.policy, "CreateSignaturePolicyResponse.policy")
    }

    /// Returns the signature policy of `namespace`.
    pub async fn describe_signature_policy(
        &self,
        namespace: &str,
    ) -> Result<SignaturePolicy, ClientError> {
        let req = DescribeSignaturePolicyRequest {
            namespace: namespace.to_string(),
        };
        let resp = retried!(
            self,
            "DescribeSignaturePolicy",
            policies,
            describe_signature_policy,
            req
        );
        policy_of(resp.policy, "DescribeSignaturePolicyResponse.policy")
    }

    /// Lists every signature policy, or only that of `namespace`.
    pub async fn list_signature_policies(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<SignaturePolicy>, ClientError> {
        let req = ListSignaturePoliciesRequest {
            namespace: namespace.unwrap_or_default().to_string(),
        };
        let resp = retried!(
            self,
            "ListSignaturePolicies",
            policies,
            list_signature_policies,
            req
        );
        Ok(resp.policies)
    }

    /// Replaces the fields set in the request (lists as a whole) and returns the
    /// policy as it now is; fields left unset keep their values.
    pub async fn update_signature_policy(
        &self,
        req: UpdateSignaturePolicyRequest,
    ) -> Result<SignaturePolicy, ClientError> {
        let resp = retried!(
            self,
            "UpdateSignaturePolicy",
            policies,
            update_signature_policy,
            req
        );
        policy_of(resp.policy, "UpdateSignaturePolicyResponse.policy")
    }

    /// Deletes the policy of `namespace` and the signatures it made in the namespace's
    /// repositories (everything else in the `.sig` manifests is kept). The answer has the deleted
    /// policy and how many signatures were removed.
    pub async fn delete_signature_policy(
        &self,
        namespace: &str,
    ) -> Result<DeleteSignaturePolicyResponse, ClientError> {
        let req = DeleteSignaturePolicyRequest {
            namespace: namespace.to_string(),
        };
        let resp = retried!(
            self,
            "DeleteSignaturePolicy",
            policies,
            delete_signature_policy,
            req
        );
        if resp.policy.is_none() {
            return Err(ClientError::MissingField(
                "DeleteSignaturePolicyResponse.policy",
            ));
        }
        Ok(resp)
    }

    /// Signs one image (`HOST[:PORT]/NAMESPACE/REPO:TAG` or `...@sha256:HEX`) with its
    /// namespace's policy key, or with `key_id` (UUID or `alias/NAME`) if given.
    pub async fn sign_image(
        &self,
        reference: &str,
        key_id: Option<&str>,
    ) -> Result<SignImageResponse, ClientError> {
        let req = SignImageRequest {
            reference: reference.to_string(),
            key_id: key_id.unwrap_or_default().to_string(),
        };
        Ok(retried!(self, "SignImage", images, sign_image, req))
    }

    /// Signs every image of `namespace` its policy covers and has not signed yet.
    /// Streams one progress message per image; read it with `stream.message().await`
    /// (errors convert with `ClientError::from`).
    pub async fn sign_namespace(
        &self,
        namespace: &str,
    ) -> Result<Streaming<SignNamespaceProgress>, ClientError> {
        let req = SignNamespaceRequest {
            namespace: namespace.to_string(),
        };
        Ok(retried!(self, "SignNamespace", images, sign_namespace, req))
    }

    /// Checks an image's signatures against its namespace's policy key, or `key_id` if
    /// given. An unsigned image or one without a valid signature is an answer (its
    /// `status`), not an error.
    pub async fn verify_image(
        &self,
        reference: &str,
        key_id: Option<&str>,
    ) -> Result<VerifyImageResponse, ClientError> {
        let req = VerifyImageRequest {
            reference: reference.to_string(),
            key_id: key_id.unwrap_or_default().to_string(),
        };
        Ok(retried!(self, "VerifyImage", images, verify_image, req))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use tokio_stream::Stream;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Channel, Server};
    use tonic::{Code, Request, Response, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;
    use crate::Reason;
    use crate::retry::RetryPolicy;
    use crate::v1::image_signing_service_server::{ImageSigningService, ImageSigningServiceServer};
    use crate::v1::signing_policy_service_server::{
        SigningPolicyService, SigningPolicyServiceServer,
    };
    use crate::v1::{
        CreateSignaturePolicyResponse, DescribeSignaturePolicyResponse, ImageSignature,
        ImageSignatureStatus, ListSignaturePoliciesResponse, PatternList, SignatureTrigger,
        UpdateSignaturePolicyResponse,
    };

    /// A stand-in for hsmd's image signing services: it keeps the policy requests it
    /// gets and answers from what they ask.
    #[derive(Clone, Default)]
    struct Mock {
        created: Arc<Mutex<Option<CreateSignaturePolicyRequest>>>,
        updated: Arc<Mutex<Option<UpdateSignaturePolicyRequest>>>,
    }

    /// A policy of `namespace`, as the mock keeps it.
    fn policy(namespace: &str) -> SignaturePolicy {
        SignaturePolicy {
            namespace: namespace.into(),
            name: "release".into(),
            enabled: true,
            key: "alias/images".into(),
            key_id: "uuid-1".into(),
            algorithm: "ECDSA_SHA_256".into(),
            repositories: vec!["**".into()],
            trigger: SignatureTrigger::Event as i32,
            ..Default::default()
        }
    }

    fn not_found(reason: &str) -> Status {
        let details =
            ErrorDetails::with_error_info(reason, "hsmd", HashMap::<String, String>::new());
        Status::with_error_details(Code::NotFound, "no such thing", details)
    }

    #[tonic::async_trait]
    impl SigningPolicyService for Mock {
        async fn create_signature_policy(
            &self,
            request: Request<CreateSignaturePolicyRequest>,
        ) -> Result<Response<CreateSignaturePolicyResponse>, Status> {
            let req = request.into_inner();
            let mut p = policy(&req.namespace);
            p.enabled = !req.disabled;
            p.trigger = req.trigger;
            *self.created.lock().unwrap() = Some(req);
            Ok(Response::new(CreateSignaturePolicyResponse {
                policy: Some(p),
            }))
        }

        async fn describe_signature_policy(
            &self,
            request: Request<DescribeSignaturePolicyRequest>,
        ) -> Result<Response<DescribeSignaturePolicyResponse>, Status> {
            let ns = request.into_inner().namespace;
            if ns == "nowhere" {
                return Err(not_found("POLICY_NOT_FOUND"));
            }
            let policy = Some(policy(&ns));
            Ok(Response::new(DescribeSignaturePolicyResponse { policy }))
        }

        async fn list_signature_policies(
            &self,
            request: Request<ListSignaturePoliciesRequest>,
        ) -> Result<Response<ListSignaturePoliciesResponse>, Status> {
            let policies = match request.into_inner().namespace.as_str() {
                "" => vec![policy("a"), policy("b")],
                ns => vec![policy(ns)],
            };
            Ok(Response::new(ListSignaturePoliciesResponse { policies }))
        }

        async fn update_signature_policy(
            &self,
            request: Request<UpdateSignaturePolicyRequest>,
        ) -> Result<Response<UpdateSignaturePolicyResponse>, Status> {
            let req = request.into_inner();
            let policy = Some(policy(&req.namespace));
            *self.updated.lock().unwrap() = Some(req);
            Ok(Response::new(UpdateSignaturePolicyResponse { policy }))
        }

        async fn delete_signature_policy(
            &self,
            request: Request<DeleteSignaturePolicyRequest>,
        ) -> Result<Response<DeleteSignaturePolicyResponse>, Status> {
            let policy = Some(policy(&request.into_inner().namespace));
            Ok(Response::new(DeleteSignaturePolicyResponse {
                policy,
                signatures_removed: 4,
            }))
        }
    }

    type ProgressStream =
        Pin<Box<dyn Stream<Item = Result<SignNamespaceProgress, Status>> + Send + 'static>>;

    #[tonic::async_trait]
    impl ImageSigningService for Mock {
        async fn sign_image(
            &self,
            request: Request<SignImageRequest>,
        ) -> Result<Response<SignImageResponse>, Status> {
            let req = request.into_inner();
            let key_id = if req.key_id.is_empty() {
                "uuid-1".to_string()
            } else {
                req.key_id
            };
            Ok(Response::new(SignImageResponse {
                repository: req.reference,
                digest: "sha256:aa".into(),
                key_id,
                algorithm: "ECDSA_SHA_256".into(),
                signed: true,
                policy: "release".into(),
            }))
        }

        type SignNamespaceStream = ProgressStream;

        async fn sign_namespace(
            &self,
            request: Request<SignNamespaceRequest>,
        ) -> Result<Response<ProgressStream>, Status> {
            let ns = request.into_inner().namespace;
            let progress = (1..=3).map(move |done| {
                Ok(SignNamespaceProgress {
                    total: 3,
                    done,
                    repository: format!("{ns}/app"),
                    tag: format!("v{done}"),
                    signed: done == 1,
                    error: if done == 3 {
                        "boom".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                })
            });
            let stream: ProgressStream = Box::pin(tokio_stream::iter(progress));
            Ok(Response::new(stream))
        }

        async fn verify_image(
            &self,
            request: Request<VerifyImageRequest>,
        ) -> Result<Response<VerifyImageResponse>, Status> {
            let req = request.into_inner();
            let (status, signatures) = if req.reference.contains("unsigned") {
                (ImageSignatureStatus::ImageUnsigned, vec![])
            } else {
                let sig = ImageSignature {
                    key_id: req.key_id,
                    valid: true,
                    policy: "release".into(),
                    ..Default::default()
                };
                (ImageSignatureStatus::ImageSigned, vec![sig])
            };
            Ok(Response::new(VerifyImageResponse {
                repository: req.reference,
                digest: "sha256:aa".into(),
                status: status as i32,
                signatures,
            }))
        }
    }

    /// Serves `mock` on a loopback port (plaintext) and connects a client to it.
    async fn serve(mock: Mock) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .add_service(SigningPolicyServiceServer::new(mock.clone()))
            .add_service(ImageSigningServiceServer::new(mock))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client::from_channel(channel).with_retry(RetryPolicy::none())
    }

    #[tokio::test]
    async fn policy_calls_send_what_they_are_given() {
        let mock = Mock::default();
        let client = serve(mock.clone()).await;
        let req = CreateSignaturePolicyRequest {
            namespace: "team".into(),
            name: "release".into(),
            key_id: "alias/images".into(),
            disabled: true,
            trigger: SignatureTrigger::Manual as i32,
            ..Default::default()
        };
        let p = client.create_signature_policy(req.clone()).await.unwrap();
        assert_eq!(mock.created.lock().unwrap().as_ref(), Some(&req));
        assert!(!p.enabled);
        assert_eq!(p.trigger, SignatureTrigger::Manual as i32);

        let update = UpdateSignaturePolicyRequest {
            namespace: "team".into(),
            tags: Some(PatternList { patterns: vec![] }),
            ..Default::default()
        };
        client
            .update_signature_policy(update.clone())
            .await
            .unwrap();
        assert_eq!(mock.updated.lock().unwrap().as_ref(), Some(&update));

        assert_eq!(
            client
                .describe_signature_policy("t")
                .await
                .unwrap()
                .namespace,
            "t"
        );
        let err = client
            .describe_signature_policy("nowhere")
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some(Reason::PolicyNotFound));
        assert_eq!(client.list_signature_policies(None).await.unwrap().len(), 2);
        let one = client.list_signature_policies(Some("c")).await.unwrap();
        assert_eq!(one[0].namespace, "c");
        let deleted = client.delete_signature_policy("team").await.unwrap();
        assert_eq!(deleted.signatures_removed, 4);
        assert_eq!(deleted.policy.unwrap().namespace, "team");
    }

    #[tokio::test]
    async fn image_calls_sign_stream_and_verify() {
        let client = serve(Mock::default()).await;
        let signed = client.sign_image("r/team/app:1", None).await.unwrap();
        assert_eq!(
            (signed.repository.as_str(), signed.key_id.as_str()),
            ("r/team/app:1", "uuid-1")
        );
        let signed = client
            .sign_image("r/team/app:1", Some("alias/k"))
            .await
            .unwrap();
        assert_eq!(signed.key_id, "alias/k");

        let mut stream = client.sign_namespace("team").await.unwrap();
        let mut seen = Vec::new();
        while let Some(p) = stream.message().await.unwrap() {
            seen.push((p.done, p.signed, p.error));
        }
        assert_eq!(
            seen,
            [
                (1, true, String::new()),
                (2, false, String::new()),
                (3, false, "boom".into())
            ]
        );

        let v = client
            .verify_image("r/team/app:1", Some("k"))
            .await
            .unwrap();
        assert_eq!(v.status, ImageSignatureStatus::ImageSigned as i32);
        assert_eq!(v.signatures[0].key_id, "k");
        let v = client
            .verify_image("r/team/unsigned:1", None)
            .await
            .unwrap();
        assert_eq!(v.status, ImageSignatureStatus::ImageUnsigned as i32);
    }
}
