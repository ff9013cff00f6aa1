//! Image signing end to end, on real parts: Debian's docker-registry notifying hsmd's
//! webhook with a bearer secret, images pushed with skopeo, signatures read back from
//! the registry's own blobs and verified with `openssl`, hsmd on a SoftHSM2 token.
//!
//! One registry and one daemon serve the whole file (they are the costly parts); each
//! scenario uses its own namespace. Pushes are handled in order, so a "marker" push that
//! must be signed, made after the pushes that must not be, proves those were handled.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hsmd_e2e::algorithms::{create_key, openssl_verify};
use hsmd_e2e::registry::{self, Image, Notify, Registry};
use hsmd_e2e::status::describe;
use hsmd_e2e::tools::{free_port, write_file};
use hsmd_e2e::v1::image_signing_service_client::ImageSigningServiceClient;
use hsmd_e2e::v1::signing_policy_service_client::SigningPolicyServiceClient;
use hsmd_e2e::v1::{
    self as pb, CreateKeyRequest, CreateSignaturePolicyRequest, DisableKeyRequest,
    GetPublicKeyRequest, ImageSignatureStatus, KeySpec, KeyUsage, SignatureTrigger,
    SigningAlgorithm,
};
use hsmd_e2e::{Daemon, reason_of};
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "webhook-secret-for-the-test";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The registry, the daemon and the clients of one test file.
struct World {
    dir: tempfile::TempDir,
    registry: Registry,
    webhook: u16,
    d: Daemon,
    http: reqwest::Client,
    images: u32,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let webhook = free_port();
        let secret = write_file(
            dir.path(),
            "webhook.secret",
            format!("{SECRET}\n").as_bytes(),
        );
        let notify = Notify {
            url: format!("http://127.0.0.1:{webhook}/registry/events"),
            secret: SECRET.into(),
        };
        let registry = Registry::start(&dir.path().join("registry"), Some(&notify));
        let d = Daemon::start_with([
            "--registry".to_string(),
            format!("http://{}", registry.addr()),
            "--webhook-listen".into(),
            format!("127.0.0.1:{webhook}"),
            "--webhook-secret-file".into(),
            secret.display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ])
        .await;
        World {
            dir,
            registry,
            webhook,
            d,
            http: reqwest::Client::new(),
            images: 0,
        }
    }

    fn policies(&self) -> SigningPolicyServiceClient<Channel> {
        SigningPolicyServiceClient::new(self.d.channel())
    }

    fn signing(&self) -> ImageSigningServiceClient<Channel> {
        ImageSigningServiceClient::new(self.d.channel())
    }

    /// A new image (its own content, so its own digest).
    fn image(&mut self) -> Image {
        self.images += 1;
        let n = self.images;
        registry::oci_image(
            &self.dir.path().join(format!("image-{n}")),
            format!("image number {n}\n").as_bytes(),
            "t",
        )
    }

    fn push(&self, image: &Image, repo_and_tag: &str) {
        registry::push(&self.registry, image, repo_and_tag);
    }

    /// Pushes `image`'s manifest by digest only (its blobs must be in `repo` already).
    async fn push_by_digest(&self, image: &Image, repo: &str) {
        let hex = image.digest.strip_prefix("sha256:").unwrap();
        let manifest = std::fs::read(image.layout.join("blobs/sha256").join(hex)).unwrap();
        let url = format!(
            "http://{}/v2/{repo}/manifests/{}",
            self.registry.addr(),
            image.digest
        );
        let resp = self
            .http
            .put(url)
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "PUT manifest by digest");
    }

    /// The `.sig` manifest of `digest` in `repo`, if any.
    async fn sig_manifest(&self, repo: &str, digest: &str) -> Option<serde_json::Value> {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.registry.addr());
        let resp = self
            .http
            .get(url)
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 404 {
            return None;
        }
        assert_eq!(resp.status().as_u16(), 200);
        Some(resp.json().await.unwrap())
    }

    /// The signatures of `digest` in `repo`: (signature bytes, payload bytes) per layer.
    async fn signatures(&self, repo: &str, digest: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(m) = self.sig_manifest(repo, digest).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for layer in m["layers"].as_array().unwrap() {
            if layer["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json" {
                continue;
            }
            let sig = layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap();
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .unwrap();
            let url = format!(
                "http://{}/v2/{repo}/blobs/{}",
                self.registry.addr(),
                layer["digest"].as_str().unwrap()
            );
            let payload = self
                .http
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push((sig, payload.to_vec()));
        }
        out
    }

    /// Uploads a blob to `repo` (POST, then PUT with the digest); returns its digest.
    async fn put_blob(&self, repo: &str, data: &[u8]) -> String {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
        let base = format!("http://{}", self.registry.addr());
        let resp = self
            .http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "start a blob upload");
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let resp = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "finish the blob upload");
        digest
    }

    /// Replaces the `.sig` manifest of `digest` in `repo` (as another signer would).
    async fn put_sig_manifest(&self, repo: &str, digest: &str, m: &serde_json::Value) {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.registry.addr());
        let resp = self
            .http
            .put(url)
            .header("Content-Type", OCI_MANIFEST)
            .body(m.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "PUT .sig manifest");
    }

    /// Waits until `digest` in `repo` has `n` signatures; returns them.
    async fn wait_signed(&self, repo: &str, digest: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sigs = self.signatures(repo, digest).await;
            if sigs.len() == n {
                return sigs;
            }
            assert!(
                Instant::now() < deadline,
                "{repo}@{digest}: {} signatures, expected {n}\nhsmd stderr:\n{}",
                sigs.len(),
                self.d.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Pushes a new image as `team/app-web:marker-N` ... under the `team` policy, and
    /// waits for its signature: every push made before it has been handled.
    async fn marker(&mut self) {
        let image = self.image();
        let tag = format!("v-marker-{}", self.images);
        self.push(&image, &format!("team/app-web:{tag}"));
        self.wait_signed("team/app-web", &image.digest, 1).await;
    }

    /// `hsmd_image_sign_queue` as /metrics says now.
    fn queued(&self) -> i64 {
        let endpoint = self
            .d
            .profile()
            .metrics_endpoint
            .clone()
            .expect("metrics_endpoint");
        let addr = endpoint.trim_start_matches("http://");
        let (status, body) = hsmd_e2e::ops::http_get(addr, "/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("hsmd_image_sign_queue "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no hsmd_image_sign_queue in\n{body}"))
    }

    async fn post_events(&self, auth: Option<&str>, body: &serde_json::Value) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("http://127.0.0.1:{}/registry/events", self.webhook))
            .header(
                "Content-Type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(body.to_string());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn public_pem(&self, key_id: &str, name: &str) -> std::path::PathBuf {
        let pem = self
            .d
            .keys()
            .get_public_key(GetPublicKeyRequest {
                key_id: key_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .public_key_pem;
        write_file(self.dir.path(), name, pem.as_bytes())
    }

    async fn create_policy(&self, req: CreateSignaturePolicyRequest) -> pb::SignaturePolicy {
        let what = req.namespace.clone();
        self.policies()
            .create_signature_policy(req)
            .await
            .unwrap_or_else(|s| panic!("CreateSignaturePolicy {what}: {}", describe(&s)))
            .into_inner()
            .policy
            .unwrap()
    }

    async fn verify(&self, reference: &str, key_id: &str) -> pb::VerifyImageResponse {
        self.signing()
            .verify_image(pb::VerifyImageRequest {
                reference: reference.into(),
                key_id: key_id.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("VerifyImage {reference}: {}", describe(&s)))
            .into_inner()
    }
}

fn push_event(id: &str, repo: &str, digest: &str, tag: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "timestamp": "2026-12-06T00:00:00Z",
        "action": "push",
        "target": {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": 400,
            "repository": repo,
            "tag": tag,
        },
        "request": {"method": "PUT"},
    })
}

fn policy(ns: &str, key: &str) -> CreateSignaturePolicyRequest {
    CreateSignaturePolicyRequest {
        namespace: ns.into(),
        name: format!("{ns}-policy"),
        key_id: key.into(),
        ..Default::default()
    }
}

/// Checks one signature the way a verifier would, with openssl and the key's PEM.
fn check_openssl(
    dir: &Path,
    pem: &Path,
    alg: SigningAlgorithm,
    sig: &[u8],
    payload: &[u8],
) -> bool {
    let n = uuid::Uuid::new_v4();
    let msg = write_file(dir, &format!("payload-{n}"), payload);
    let sig = write_file(dir, &format!("sig-{n}"), sig);
    openssl_verify(alg, pem, &msg, &sig)
}

fn assert_refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    reason: &str,
    what: &str,
) -> String {
    let s = r.expect_err(what);
    assert_eq!(
        (s.code(), reason_of(&s).as_deref()),
        (code, Some(reason)),
        "{what}: {}",
        describe(&s)
    );
    s.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_signed_on_push_in_cosign_format_and_verified() {
    let mut w = World::start().await;
    let key = create_key(&mut w.d.keys(), KeySpec::EcP256, "alias/team-signer").await;
    let pem = w.public_pem(&key, "team.pem").await;

    // --- A policy, and what it signs and does not -------------------------------------
    let p = w
        .create_policy(CreateSignaturePolicyRequest {
            repositories: vec!["app-*".into()],
            tags: vec!["v*".into()],
            ..policy("team", "alias/team-signer")
        })
        .await;
    assert_eq!(
        (p.algorithm.as_str(), p.key_id.as_str()),
        ("ECDSA_SHA_256", key.as_str())
    );
    assert_eq!(
        p.domain,
        w.registry.addr(),
        "the domain defaults to the registry's host"
    );
    assert!(p.enabled);

    let a = w.image();
    w.push(&a, "team/app-web:v1");
    let sigs = w.wait_signed("team/app-web", &a.digest, 1).await;
    let payload: serde_json::Value = serde_json::from_slice(&sigs[0].1).unwrap();
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        a.digest.as_str()
    );
    assert_eq!(
        payload["critical"]["type"],
        "cosign container image signature"
    );
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        format!("{}/team/app-web", w.registry.addr())
    );
    assert_eq!(payload["optional"]["policy"], "team-policy");
    assert!(
        check_openssl(
            w.dir.path(),
            &pem,
            SigningAlgorithm::EcdsaSha256,
            &sigs[0].0,
            &sigs[0].1
        ),
        "openssl verifies the signature over the payload blob"
    );
    let mut tampered = sigs[0].1.clone();
    tampered[10] ^= 1;
    assert!(!check_openssl(
        w.dir.path(),
        &pem,
        SigningAlgorithm::EcdsaSha256,
        &sigs[0].0,
        &tampered
    ));
    let v = w
        .verify(&format!("{}/team/app-web:v1", w.registry.addr()), "")
        .await;
    assert_eq!(v.status(), ImageSignatureStatus::ImageSigned, "{v:?}");
    assert_eq!(v.digest, a.digest);

    // Not in scope: another tag, another repository, another namespace.
    let (b, c, e) = (w.image(), w.image(), w.image());
    w.push(&b, "team/app-web:dev");
    w.push(&c, "team/db:v1");
    w.push(&e, "other/app-web:v1");
    // The same digest again, and under a second tag: still one signature.
    w.push(&a, "team/app-web:v1");
    w.push(&a, "team/app-web:v2");
    w.marker().await;
    assert!(
        w.signatures("team/app-web", &b.digest).await.is_empty(),
        "tag dev is out of scope"
    );
    assert!(
        w.signatures("team/db", &c.digest).await.is_empty(),
        "repository db is out of scope"
    );
    assert!(
        w.signatures("other/app-web", &e.digest).await.is_empty(),
        "other namespace"
    );
    assert_eq!(
        w.signatures("team/app-web", &a.digest).await.len(),
        1,
        "one per key"
    );
    let v = w.verify(&format!("team/app-web@{}", b.digest), "").await;
    assert_eq!(v.status(), ImageSignatureStatus::ImageUnsigned, "{v:?}");

    // A digest-only push: signed only with untagged.
    let g = w.image();
    w.push(&g, "team/app-bare:seed");
    w.push_by_digest(&g, "team/app-bare").await;
    w.marker().await;
    assert!(
        w.signatures("team/app-bare", &g.digest).await.is_empty(),
        "untagged is off"
    );
    w.policies()
        .update_signature_policy(pb::UpdateSignaturePolicyRequest {
            namespace: "team".into(),
            untagged: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let h = w.image();
    w.push(&h, "team/app-bare:seed2");
    w.push_by_digest(&h, "team/app-bare").await;
    w.wait_signed("team/app-bare", &h.digest, 1).await;

    // --- The webhook's door: secret, malformed events -----------------------------------
    let ok_event = push_event("evt-0001", "team/app-web", &b.digest, "v9");
    let body = serde_json::json!({"events": [ok_event]});
    assert_eq!(w.post_events(None, &body).await.0, 401, "no secret");
    assert_eq!(
        w.post_events(Some("Bearer wrong"), &body).await.0,
        401,
        "wrong secret"
    );
    let (status, text) = w
        .post_events(Some(&format!("Bearer {SECRET}")), &serde_json::json!("{"))
        .await;
    assert_eq!(status, 400, "{text}");
    let batch = serde_json::json!({"events": [{"action": "push", "id": "evt-bad"}, ok_event]});
    let (status, text) = w
        .post_events(Some(&format!("Bearer {SECRET}")), &batch)
        .await;
    assert_eq!(status, 400, "one malformed event: {text}");
    // The valid event of that batch (tag v9 of the image pushed as dev) was kept.
    w.wait_signed("team/app-web", &b.digest, 1).await;
    let log = std::fs::read_to_string(w.d.audit_log_path()).unwrap();
    let denied = log
        .lines()
        .filter(|l| {
            l.contains("\"method\":\"hsmd/RegistryEvents\"") && l.contains("\"outcome\":\"denied\"")
        })
        .count();
    assert_eq!(denied, 2, "each refused webhook call is an audit record");
    assert!(
        log.lines()
            .any(|l| l.contains("\"method\":\"hsmd/SignImageOnPush\"")
                && l.contains(&format!("digest={}", a.digest))
                && l.contains("policy=team-policy")
                && l.contains("repository=team/app-web")
                && l.contains("tag=v1")
                && l.contains(&key)),
        "a signature made on push is an audit record naming policy, repository, tag, digest, key"
    );
    assert!(!log.contains(SECRET), "the webhook secret is never logged");

    // --- Patterns: {a,b}, **, ? ---------------------------------------------------------
    w.create_policy(CreateSignaturePolicyRequest {
        repositories: vec!["{web,api}".into(), "deep/**".into(), "x?".into()],
        ..policy("pat", &key)
    })
    .await;
    let cases = [
        ("pat/web", true),
        ("pat/api", true),
        ("pat/db", false),
        ("pat/deep/a/b", true),
        ("pat/xy", true),
        ("pat/xyz", false),
    ];
    let mut pushed = Vec::new();
    for (repo, _) in cases {
        let i = w.image();
        w.push(&i, &format!("{repo}:1"));
        pushed.push(i);
    }
    w.marker().await;
    for ((repo, signed), i) in cases.iter().zip(&pushed) {
        let n = w.signatures(repo, &i.digest).await.len();
        assert_eq!(n, usize::from(*signed), "{repo}");
    }

    // --- Disabled and manual policies ---------------------------------------------------
    w.create_policy(CreateSignaturePolicyRequest {
        disabled: true,
        ..policy("off", &key)
    })
    .await;
    w.create_policy(CreateSignaturePolicyRequest {
        trigger: SignatureTrigger::Manual as i32,
        ..policy("man", &key)
    })
    .await;
    let (i_off, i_man) = (w.image(), w.image());
    w.push(&i_off, "off/app:v1");
    w.push(&i_man, "man/app:v1");
    w.marker().await;
    assert!(
        w.signatures("off/app", &i_off.digest).await.is_empty(),
        "disabled policy"
    );
    assert!(
        w.signatures("man/app", &i_man.digest).await.is_empty(),
        "manual trigger"
    );
    let signed = w
        .signing()
        .sign_image(pb::SignImageRequest {
            reference: format!("{}/man/app:v1", w.registry.addr()),
            key_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(signed.signed && signed.policy == "man-policy", "{signed:?}");
    let again = w
        .signing()
        .sign_image(pb::SignImageRequest {
            reference: "man/app:v1".into(),
            key_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.signed, "signing a signed digest again adds nothing");
    // With the policy's key, only what the enabled policy covers.
    let by_digest = pb::SignImageRequest {
        reference: format!("man/app@{}", i_man.digest),
        key_id: String::new(),
    };
    assert_refused(
        w.signing().sign_image(by_digest).await,
        Code::FailedPrecondition,
        "IMAGE_OUT_OF_SCOPE",
        "a digest without tag, policy without untagged",
    );
    let disabled = pb::SignImageRequest {
        reference: "off/app:v1".into(),
        key_id: String::new(),
    };
    assert_refused(
        w.signing().sign_image(disabled).await,
        Code::FailedPrecondition,
        "POLICY_DISABLED",
        "the policy of off/ is disabled",
    );
    assert_eq!(w.signatures("man/app", &i_man.digest).await.len(), 1);

    // --- sign-namespace signs what was pushed before the policy -------------------------
    let (p1, p2) = (w.image(), w.image());
    w.push(&p1, "pre/app:v1");
    w.push(&p2, "pre/lib:v2");
    w.create_policy(policy("pre", &key)).await;
    w.marker().await;
    assert!(
        w.signatures("pre/app", &p1.digest).await.is_empty(),
        "a new policy signs nothing old"
    );
    let mut stream = w
        .signing()
        .sign_namespace(pb::SignNamespaceRequest {
            namespace: "pre".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut progress = Vec::new();
    while let Some(p) = stream.message().await.unwrap() {
        progress.push(p);
    }
    assert_eq!(progress.len(), 2, "{progress:?}");
    assert!(
        progress
            .iter()
            .all(|p| p.signed && p.error.is_empty() && p.total == 2)
    );
    assert_eq!(w.signatures("pre/app", &p1.digest).await.len(), 1);
    assert_eq!(w.signatures("pre/lib", &p2.digest).await.len(), 1);

    // --- Verify: tampered, other key ----------------------------------------------------
    let other = create_key(&mut w.d.keys(), KeySpec::Rsa2048, "alias/other-signer").await;
    let v = w.verify("pre/app:v1", &other).await;
    assert_eq!(
        v.status(),
        ImageSignatureStatus::ImageSignatureInvalid,
        "{v:?}"
    );
    assert!(v.signatures[0].reason.contains("does not verify"), "{v:?}");
    let mut m = w.sig_manifest("pre/lib", &p2.digest).await.unwrap();
    let sig = m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap()
        .to_string();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&sig)
        .unwrap();
    let last = raw.len() - 3;
    raw[last] ^= 0x01;
    m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] =
        base64::engine::general_purpose::STANDARD
            .encode(&raw)
            .into();
    let tag = format!("{}.sig", p2.digest.replace(':', "-"));
    let resp = w
        .http
        .put(format!(
            "http://{}/v2/pre/lib/manifests/{tag}",
            w.registry.addr()
        ))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let v = w.verify("pre/lib:v2", "").await;
    assert_eq!(
        v.status(),
        ImageSignatureStatus::ImageSignatureInvalid,
        "{v:?}"
    );

    // --- Delete removes the policy's signatures, keeps everything else -----------------
    let del_key = create_key(&mut w.d.keys(), KeySpec::EcP256, "").await;
    w.create_policy(policy("del", &del_key)).await;
    let dimg = w.image();
    w.push(&dimg, "del/app:v1");
    w.wait_signed("del/app", &dimg.digest, 1).await;
    let by_other = w
        .signing()
        .sign_image(pb::SignImageRequest {
            reference: "del/app:v1".into(),
            key_id: other.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_other.signed && by_other.algorithm == "RSA_PKCS1_SHA_256");
    w.wait_signed("del/app", &dimg.digest, 2).await;
    // Another signer's annotations and an attachment layer, as cosign writes them.
    let attachment = b"{\"bundle\":true}";
    let attachment_digest = w.put_blob("del/app", attachment).await;
    let mut m = w.sig_manifest("del/app", &dimg.digest).await.unwrap();
    m["layers"][1]["annotations"]["dev.sigstore.cosign/bundle"] = "{\"rekor\":42}".into();
    m["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "size": attachment.len(),
        "digest": attachment_digest,
    }));
    w.put_sig_manifest("del/app", &dimg.digest, &m).await;
    // The policy's key disabled since: its signatures still go, by the policy's name.
    w.d.keys()
        .disable_key(DisableKeyRequest {
            key_id: del_key.clone(),
        })
        .await
        .unwrap();
    let gone = w
        .policies()
        .delete_signature_policy(pb::DeleteSignaturePolicyRequest {
            namespace: "del".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.signatures_removed, 1);
    let left = w.signatures("del/app", &dimg.digest).await;
    assert_eq!(left.len(), 1);
    let kept = w.sig_manifest("del/app", &dimg.digest).await.unwrap();
    assert_eq!(
        kept["layers"][0], m["layers"][1],
        "the other key's layer, annotations and all"
    );
    assert_eq!(kept["layers"][1], m["layers"][2], "the attachment");
    assert_eq!(kept["layers"].as_array().unwrap().len(), 2);
    let other_pem = w.public_pem(&other, "other.pem").await;
    assert!(check_openssl(
        w.dir.path(),
        &other_pem,
        SigningAlgorithm::RsaPkcs1Sha256,
        &left[0].0,
        &left[0].1
    ));
    assert_eq!(
        w.verify("del/app:v1", &other).await.status(),
        ImageSignatureStatus::ImageSigned
    );

    // --- A policy signs with its key even after the alias it was named by moves --------
    let first = create_key(&mut w.d.keys(), KeySpec::EcP256, "alias/moving").await;
    w.create_policy(policy("ali", "alias/moving")).await;
    let second = create_key(&mut w.d.keys(), KeySpec::EcP256, "").await;
    w.d.keys()
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/moving".into(),
            target_key_id: second.clone(),
        })
        .await
        .unwrap();
    let moved = w.image();
    w.push(&moved, "ali/app:v1");
    w.wait_signed("ali/app", &moved.digest, 1).await;
    let v = w.verify("ali/app:v1", &first).await;
    assert_eq!(
        v.status(),
        ImageSignatureStatus::ImageSigned,
        "signed with the first key: {v:?}"
    );

    // --- A scheduled policy signs at its cron, not on push -------------------------------
    let sched = w.image();
    w.push(&sched, "sched/app:v1");
    w.create_policy(CreateSignaturePolicyRequest {
        trigger: SignatureTrigger::Scheduled as i32,
        cron: "*/2 * * * * *".into(),
        ..policy("sched", &key)
    })
    .await;
    let again = w.image();
    w.push(&again, "sched/app:v2");
    w.wait_signed("sched/app", &sched.digest, 1).await;
    w.wait_signed("sched/app", &again.digest, 1).await;
    let log = std::fs::read_to_string(w.d.audit_log_path()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"method\":\"hsmd/SignImageScheduled\"")
                && l.contains("policy=sched-policy")),
        "a scheduled run's signatures are audit records"
    );

    // --- Registry down, then hsmd killed right after acknowledging ----------------------
    let late = w.image();
    w.push(&late, "team/app-late:seed");
    w.registry.stop();
    let ev = serde_json::json!({"events": [push_event("evt-late", "team/app-late", &late.digest, "v1")]});
    let (status, text) = w.post_events(Some(&format!("Bearer {SECRET}")), &ev).await;
    assert_eq!(status, 200, "{text}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.queued(),
        1,
        "the push waits in the queue while the registry is down"
    );
    w.d.kill_and_restart().await;
    w.registry.restart();
    w.wait_signed("team/app-late", &late.digest, 1).await;
    // Redelivered after the restart: still one signature.
    let (status, _) = w.post_events(Some(&format!("Bearer {SECRET}")), &ev).await;
    assert_eq!(status, 200);
    w.marker().await;
    assert_eq!(
        w.signatures("team/app-late", &late.digest).await.len(),
        1,
        "exactly once"
    );
    assert_eq!(w.queued(), 0, "nothing left in the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsmctl_manages_policies_and_verifies_images() {
    let mut w = World::start().await;
    let key = create_key(&mut w.d.keys(), KeySpec::EcP384, "alias/cli-signer").await;
    let other = create_key(&mut w.d.keys(), KeySpec::EcP256, "").await;
    w.create_policy(policy("team", &key)).await;
    let url = format!("http://127.0.0.1:{}/registry/events", w.webhook);
    assert!(
        w.d.stdout_text()
            .contains(&format!("registry webhook on {url}")),
        "hsmd dev prints the webhook: {}",
        w.d.stdout_text()
    );
    let profile = std::fs::read_to_string(w.d.profile_path()).unwrap();
    assert!(
        profile.contains(&format!("webhook_endpoint = \"{url}\"")),
        "{profile}"
    );
    let created = w.d.hsmctl_ok([
        "-o",
        "json",
        "policy",
        "create",
        "--namespace",
        "cli",
        "--name",
        "cli.policy",
        "--key",
        "alias/cli-signer",
        "--repo",
        "{app,web}",
        "--tag",
        "v*",
        "--description",
        "signed by the CLI test",
    ]);
    let p: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(p["algorithm"], "ECDSA_SHA_384", "{created}");
    assert_eq!(
        p["repositories"],
        serde_json::json!(["{app,web}"]),
        "{created}"
    );
    let (signed, unsigned) = (w.image(), w.image());
    w.push(&signed, "cli/app:v1");
    w.push(&unsigned, "cli/app:dev");
    w.wait_signed("cli/app", &signed.digest, 1).await;
    w.marker().await;
    let reference = format!("{}/cli/app:v1", w.registry.addr());
    let ok = w.d.hsmctl(["image", "verify", &reference]);
    assert_eq!(ok.code, Some(0), "{}", ok.stdout);
    let no = w.d.hsmctl([
        "image",
        "verify",
        &format!("{}/cli/app:dev", w.registry.addr()),
    ]);
    assert_eq!(no.code, Some(1), "unsigned: {} {}", no.stdout, no.stderr);
    let bad = w.d.hsmctl(["image", "verify", &reference, "--key", &other]);
    assert_eq!(
        bad.code,
        Some(1),
        "another key: {} {}",
        bad.stdout,
        bad.stderr
    );
    let signed_now = w.d.hsmctl_ok([
        "-o",
        "json",
        "image",
        "sign",
        &format!("{}/cli/app:dev", w.registry.addr()),
        "--key",
        "alias/cli-signer",
    ]);
    let out_of_scope = w.d.hsmctl([
        "image",
        "sign",
        &format!("{}/cli/app:dev", w.registry.addr()),
    ]);
    assert_eq!(out_of_scope.code, Some(2), "{}", out_of_scope.stderr);
    assert!(
        out_of_scope.stderr.contains("IMAGE_OUT_OF_SCOPE"),
        "{}",
        out_of_scope.stderr
    );
    assert!(
        signed_now.contains("\"signed\": true") || signed_now.contains("\"signed\":true"),
        "{signed_now}"
    );
    let list = w.d.hsmctl_ok(["-o", "json", "policy", "list"]);
    assert!(
        list.contains("cli.policy") && list.contains("team-policy"),
        "{list}"
    );
    let refused = w.d.hsmctl(["policy", "delete", "--namespace", "cli"]);
    assert_eq!(
        refused.code,
        Some(2),
        "delete needs --confirm: {}",
        refused.stderr
    );
    assert!(
        w.d.hsmctl_ok(["policy", "describe", "--namespace", "cli"])
            .contains("cli.policy")
    );
    w.d.hsmctl_ok(["policy", "delete", "--namespace", "cli", "--confirm"]);
    assert!(
        w.sig_manifest("cli/app", &signed.digest).await.is_none(),
        "its signatures are gone"
    );
    let help = w.d.hsmctl_ok(["policy", "delete", "--help"]);
    assert!(help.contains("signatures"), "{help}");
    let gone = w.d.hsmctl(["policy", "describe", "--namespace", "cli"]);
    assert_eq!(gone.code, Some(2));
    assert!(gone.stderr.contains("POLICY_NOT_FOUND"), "{}", gone.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let d = Daemon::start_with([
        "--registry".to_string(),
        format!("http://{}", registry.addr()),
    ])
    .await;
    let mut keys = d.keys();
    let ec = create_key(&mut keys, KeySpec::EcP256, "").await;
    let ed = create_key(&mut keys, KeySpec::Ed25519, "").await;
    let aes = hsmd_e2e::keys::create(
        &mut keys,
        CreateKeyRequest {
            spec: KeySpec::Aes256 as i32,
            usage: KeyUsage::EncryptDecrypt as i32,
            ..Default::default()
        },
        "AES",
    )
    .await;
    let off = create_key(&mut keys, KeySpec::EcP384, "").await;
    keys.disable_key(DisableKeyRequest {
        key_id: off.clone(),
    })
    .await
    .unwrap();
    let mut p = SigningPolicyServiceClient::new(d.channel());
    p.create_signature_policy(policy("ns", &ec)).await.unwrap();

    let cases: Vec<(CreateSignaturePolicyRequest, Code, &str)> = vec![
        (policy("ns", &ec), Code::AlreadyExists, "POLICY_EXISTS"),
        (
            CreateSignaturePolicyRequest {
                name: "X".into(),
                ..policy("a1", &ec)
            },
            Code::InvalidArgument,
            "INVALID_POLICY_NAME",
        ),
        (
            CreateSignaturePolicyRequest {
                name: "a..b".into(),
                ..policy("a2", &ec)
            },
            Code::InvalidArgument,
            "INVALID_POLICY_NAME",
        ),
        (
            CreateSignaturePolicyRequest {
                name: "-ab".into(),
                ..policy("a3", &ec)
            },
            Code::InvalidArgument,
            "INVALID_POLICY_NAME",
        ),
        (
            CreateSignaturePolicyRequest {
                name: "a".repeat(51),
                ..policy("a4", &ec)
            },
            Code::InvalidArgument,
            "INVALID_POLICY_NAME",
        ),
        (
            policy("Bad/NS", &ec),
            Code::InvalidArgument,
            "INVALID_NAMESPACE",
        ),
        (
            policy("b1", &aes),
            Code::FailedPrecondition,
            "WRONG_KEY_USAGE",
        ),
        (
            policy("b2", &ed),
            Code::FailedPrecondition,
            "KEY_SPEC_NOT_ALLOWED",
        ),
        (policy("b3", &off), Code::FailedPrecondition, "KEY_DISABLED"),
        (
            policy("b4", "alias/nope"),
            Code::NotFound,
            "ALIAS_NOT_FOUND",
        ),
        (
            CreateSignaturePolicyRequest {
                repositories: vec!["app-[".into()],
                ..policy("c1", &ec)
            },
            Code::InvalidArgument,
            "INVALID_SCOPE_RULE",
        ),
        (
            CreateSignaturePolicyRequest {
                tags: vec!["x".repeat(513)],
                ..policy("c2", &ec)
            },
            Code::InvalidArgument,
            "INVALID_SCOPE_RULE",
        ),
        (
            CreateSignaturePolicyRequest {
                trigger: SignatureTrigger::Scheduled as i32,
                cron: "61 * * * *".into(),
                ..policy("c3", &ec)
            },
            Code::InvalidArgument,
            "INVALID_SCHEDULE",
        ),
        (
            CreateSignaturePolicyRequest {
                trigger: SignatureTrigger::Scheduled as i32,
                cron: "0 0 30 2 *".into(),
                ..policy("c4", &ec)
            },
            Code::InvalidArgument,
            "INVALID_SCHEDULE",
        ),
        (
            CreateSignaturePolicyRequest {
                trigger: SignatureTrigger::Scheduled as i32,
                ..policy("c5", &ec)
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            CreateSignaturePolicyRequest {
                cron: "0 * * * *".into(),
                ..policy("c6", &ec)
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (req, code, reason) in cases {
        let what = format!("{} {:?}", req.namespace, req.name);
        let msg = assert_refused(p.create_signature_policy(req).await, code, reason, &what);
        if reason == "INVALID_SCOPE_RULE" && what.starts_with("c1") {
            assert!(msg.contains("app-[") && msg.contains("position 4"), "{msg}");
        }
    }
    // Nothing half-made: only the first policy exists.
    let list = p
        .list_signature_policies(pb::ListSignaturePoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.policies.len(), 1);
    assert_refused(
        p.describe_signature_policy(pb::DescribeSignaturePolicyRequest {
            namespace: "none".into(),
        })
        .await,
        Code::NotFound,
        "POLICY_NOT_FOUND",
        "describe a missing policy",
    );
    let mut s = ImageSigningServiceClient::new(d.channel());
    assert_refused(
        s.sign_image(pb::SignImageRequest {
            reference: "app:v1".into(),
            key_id: ec.clone(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_IMAGE_REFERENCE",
        "reference without namespace",
    );
    assert_refused(
        s.sign_image(pb::SignImageRequest {
            reference: "ns/app:v1".into(),
            key_id: ec.clone(),
        })
        .await,
        Code::NotFound,
        "IMAGE_NOT_FOUND",
        "image not in the registry",
    );
    assert_refused(
        s.verify_image(pb::VerifyImageRequest {
            reference: "other.example:5000/ns/app:v1".into(),
            key_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_IMAGE_REFERENCE",
        "another registry",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_actions_are_granted_by_name_and_keys_by_sign() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let extra = format!(
        r#"
[[policy.rules]]
principals = ["{admin}"]
actions = ["*"]
keys = ["*"]

[[policy.rules]]
principals = ["spiffe://hsmd.dev/ci"]
actions = ["policy:*", "image:verify", "Sign"]
keys = ["alias/ci-*"]

[[policy.rules]]
principals = ["spiffe://hsmd.dev/app"]
actions = ["use"]
keys = ["*"]

[registry]
url = "http://{addr}"
"#,
        admin = hsmd_e2e::ADMIN_PRINCIPAL,
        addr = registry.addr()
    );
    let (d, _) = Daemon::start_configured(&extra).await;
    let ci_key = create_key(&mut d.keys(), KeySpec::EcP256, "alias/ci-signer").await;
    let admin_key = create_key(&mut d.keys(), KeySpec::EcP256, "alias/admin-signer").await;
    let dref = &d;
    let channel = |name: &str, principal: &str| {
        let cert = dref.issue_from_dev_ca(name, Some(principal));
        async move {
            dref.connect_as(&cert.cert_pem, &cert.key_pem)
                .await
                .unwrap()
        }
    };
    let ci = channel("ci", "spiffe://hsmd.dev/ci").await;
    let app = channel("app", "spiffe://hsmd.dev/app").await;

    let mut ci_policies = SigningPolicyServiceClient::new(ci.clone());
    let p = ci_policies
        .create_signature_policy(policy("ci", "alias/ci-signer"))
        .await
        .unwrap_or_else(|s| panic!("{}", describe(&s)))
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(p.key_id, ci_key);
    let msg = assert_refused(
        ci_policies
            .create_signature_policy(policy("other", &admin_key))
            .await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "binding a key the caller may not Sign with",
    );
    assert!(msg.contains("Sign") && msg.contains(&admin_key), "{msg}");
    let update = pb::UpdateSignaturePolicyRequest {
        namespace: "ci".into(),
        key_id: Some(admin_key.clone()),
        ..Default::default()
    };
    assert_refused(
        ci_policies.update_signature_policy(update).await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "moving the policy to a key the caller may not Sign with",
    );
    let sign = |reference: &str| pb::SignImageRequest {
        reference: reference.into(),
        key_id: String::new(),
    };
    assert_refused(
        ImageSigningServiceClient::new(ci)
            .sign_image(sign("ci/app:v1"))
            .await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "image:verify and policy:* do not grant SignImage",
    );
    let mut app_images = ImageSigningServiceClient::new(app.clone());
    assert_refused(
        app_images.sign_image(sign("ci/app:v1")).await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "`use` on every key does not grant SignImage",
    );
    let verify = pb::VerifyImageRequest {
        reference: "ci/app:v1".into(),
        key_id: String::new(),
    };
    assert_refused(
        app_images.verify_image(verify).await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "`use` does not grant VerifyImage",
    );
    assert_refused(
        SigningPolicyServiceClient::new(app)
            .describe_signature_policy(pb::DescribeSignaturePolicyRequest {
                namespace: "ci".into(),
            })
            .await,
        Code::PermissionDenied,
        "ACCESS_DENIED",
        "`use` does not grant policy calls",
    );
}
