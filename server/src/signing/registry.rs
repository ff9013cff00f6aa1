//! The registry client: the few calls of the OCI distribution API that image signing
//! needs, through `oci-client` (manifests, blobs, tags, and its basic or bearer-token
//! auth), plus the two it lacks, the catalog and manifest deletion, on the same `reqwest`.
//!
//! Errors sort into what a caller acts on: the registry has no such thing
//! ([`RegistryError::NotFound`]), it is down or failing and a retry may help
//! ([`RegistryError::Unavailable`]), or it refused what was asked
//! ([`RegistryError::Refused`]: auth, a bad name, a manifest it would not take).

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;

use super::config::RegistryConfig;
use super::cosign::{self, Digest, SignatureSet};
use super::shown;

/// What the registry said, sorted by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("not found in the registry: {0}")]
    NotFound(String),
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("registry refused the request: {0}")]
    Refused(String),
    #[error("registry answered with a signature manifest hsmd cannot read: {0}")]
    Format(#[from] cosign::FormatError),
}

impl RegistryError {
    fn of(what: &str, e: OciDistributionError) -> RegistryError {
        let text = || shown(&format!("{what}: {e}"));
        match &e {
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) =>
            {
                RegistryError::NotFound(what.to_string())
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                RegistryError::NotFound(what.to_string())
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                RegistryError::NotFound(what.to_string())
            }
            OciDistributionError::ServerError { code, .. } if *code >= 500 || *code == 429 => {
                RegistryError::Unavailable(text())
            }
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
                RegistryError::Unavailable(text())
            }
            _ => RegistryError::Refused(text()),
        }
    }

    fn of_http(what: &str, e: reqwest::Error) -> RegistryError {
        RegistryError::Unavailable(shown(&format!("{what}: {e}")))
    }
}

/// Payloads of a `.sig` manifest's signatures, by layer digest.
pub(crate) type Payloads = std::collections::HashMap<Digest, Vec<u8>>;

/// Largest signature payload read (hsmd's are a few hundred bytes).
pub(crate) const MAX_PAYLOAD: u64 = 64 * 1024;

/// Most catalog or tag pages read (1000 names each) before giving up on a registry
/// that keeps answering.
const MAX_PAGES: usize = 1000;

/// A blob sink that refuses bytes past `limit`: a registry that sends more than the
/// descriptor said cannot make hsmd buffer it.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "blob longer than its descriptor says",
            )));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Media types accepted when reading an image's manifest.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A connection to the configured registry.
#[derive(Clone)]
pub(crate) struct Registry {
    /// `host[:port]`, as references and signatures name the registry.
    host: String,
    /// `http://host[:port]` or `https://...`.
    base: String,
    oci: Client,
    http: reqwest::Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

impl Registry {
    /// A client for `cfg` (no connection is made yet).
    pub(crate) fn new(cfg: &RegistryConfig) -> Result<Registry, String> {
        let mut oci_cfg = ClientConfig {
            protocol: if cfg.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        if let Some(pem) = &cfg.ca_pem {
            oci_cfg
                .extra_root_certificates
                .push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                });
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| format!("registry.ca_file: {e}"))?;
            http = http.add_root_certificate(cert);
        }
        let auth = match (&cfg.username, &cfg.password, &cfg.token) {
            (Some(u), Some(p), _) => RegistryAuth::Basic(u.clone(), p.expose_secret().to_string()),
            (_, _, Some(t)) => RegistryAuth::Bearer(t.expose_secret().to_string()),
            _ => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            host: cfg.host.clone(),
            base: cfg.base_url(),
            oci: Client::new(oci_cfg),
            http: http.build().map_err(|e| format!("registry client: {e}"))?,
            auth,
        })
    }

    /// `host[:port]` of the registry.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_string(), tag.to_string())
    }

    fn by_digest(&self, repository: &str, digest: &Digest) -> Reference {
        Reference::with_digest(
            self.host.clone(),
            repository.to_string(),
            digest.as_str().to_string(),
        )
    }

    /// The manifest digest a tag (or a digest: checked to exist) names.
    pub(crate) async fn resolve(
        &self,
        repository: &str,
        tag_or_digest: &str,
    ) -> Result<Digest, RegistryError> {
        let what = format!("{repository}:{tag_or_digest}");
        let r = if tag_or_digest.starts_with("sha256:") {
            self.by_digest(repository, &Digest::parse(tag_or_digest)?)
        } else {
            self.reference(repository, tag_or_digest)
        };
        let (_, digest) = self
            .oci
            .pull_manifest_raw(&r, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| RegistryError::of(&what, e))?;
        Ok(Digest::parse(&digest)?)
    }

    /// The `.sig` manifest of `digest` in `repository` (empty if it has none), and the
    /// payload of each of its signatures, by layer digest.
    pub(crate) async fn signatures(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<(SignatureSet, Payloads), RegistryError> {
        let tag = digest.signature_tag();
        let r = self.reference(repository, &tag);
        let manifest = match self
            .oci
            .pull_manifest_raw(&r, &self.auth, &[cosign::OCI_MANIFEST])
            .await
        {
            Ok((bytes, _)) => bytes,
            Err(e) => {
                return match RegistryError::of(&format!("{repository}:{tag}"), e) {
                    RegistryError::NotFound(_) => Ok((SignatureSet::default(), Payloads::new())),
                    other => Err(other),
                };
            }
        };
        let set = SignatureSet::parse(&manifest)?;
        let mut payloads = Payloads::new();
        for layer in set.signatures() {
            let payload = self.blob(repository, &layer.digest, layer.size).await?;
            payloads.insert(layer.digest.clone(), payload);
        }
        Ok((set, payloads))
    }

    /// A blob, checked against its digest (by oci-client) and read to at most its
    /// declared size (and never more than [`MAX_PAYLOAD`]).
    async fn blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size > MAX_PAYLOAD {
            return Err(RegistryError::Refused(format!(
                "signature payload {digest} is {size} bytes (at most {MAX_PAYLOAD} are read)"
            )));
        }
        let r = self.by_digest(repository, digest);
        let mut out = Capped {
            buf: Vec::with_capacity(size as usize),
            limit: size as usize,
        };
        let layer = oci_client::manifest::OciDescriptor {
            media_type: cosign::SIMPLE_SIGNING.to_string(),
            digest: digest.as_str().to_string(),
            size: size as i64,
            ..Default::default()
        };
        self.oci
            .pull_blob(&r, &layer, &mut out)
            .await
            .map_err(|e| RegistryError::of(&format!("blob {digest}"), e))?;
        Ok(out.buf)
    }

    /// Writes `set` as the `.sig` manifest of `digest`, after pushing the payload blobs
    /// of the layers it adds (`new`) and its config blob.
    pub(crate) async fn put_signatures(
        &self,
        repository: &str,
        digest: &Digest,
        set: &SignatureSet,
        new: &[(Digest, Vec<u8>)],
    ) -> Result<(), RegistryError> {
        let sig = set.encode();
        let tag = digest.signature_tag();
        let r = self.reference(repository, &tag);
        let what = format!("{repository}:{tag}");
        for (d, payload) in new {
            self.oci
                .push_blob(&r, payload, d.as_str())
                .await
                .map_err(|e| RegistryError::of(&what, e))?;
        }
        self.oci
            .push_blob(&r, &sig.config, Digest::of(&sig.config).as_str())
            .await
            .map_err(|e| RegistryError::of(&what, e))?;
        self.oci
            .push_manifest_raw(
                &r,
                sig.manifest,
                HeaderValue::from_static(cosign::OCI_MANIFEST),
            )
            .await
            .map_err(|e| RegistryError::of(&what, e))?;
        Ok(())
    }

    /// Deletes the `.sig` manifest of `digest` (the registry must allow deletes).
    pub(crate) async fn delete_signatures(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let tag = digest.signature_tag();
        let what = format!("{repository}:{tag}");
        // The distribution API deletes manifests by digest, not by tag.
        let r = self.reference(repository, &tag);
        let (_, sig_digest) = match self
            .oci
            .pull_manifest_raw(&r, &self.auth, &[cosign::OCI_MANIFEST])
            .await
        {
            Ok(m) => m,
            Err(e) => {
                return match RegistryError::of(&what, e) {
                    RegistryError::NotFound(_) => Ok(()),
                    other => Err(other),
                };
            }
        };
        let url = format!("{}/v2/{repository}/manifests/{sig_digest}", self.base);
        let resp = self
            .authed(self.http.delete(&url))
            .send()
            .await
            .map_err(|e| RegistryError::of_http(&what, e))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            s if s >= 500 => Err(RegistryError::Unavailable(format!("{what}: HTTP {s}"))),
            405 => Err(RegistryError::Refused(format!(
                "{what}: the registry does not allow deletes (distribution: storage.delete.enabled: true)"
            ))),
            s => Err(RegistryError::Refused(format!("{what}: HTTP {s}"))),
        }
    }

    /// The repositories below `namespace/` (the catalog, all pages).
    pub(crate) async fn repositories(&self, namespace: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let prefix = format!("{namespace}/");
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req = self
                .http
                .get(format!("{}/v2/_catalog", self.base))
                .query(&[("n", "1000")]);
            if let Some(l) = &last {
                req = req.query(&[("last", l.as_str())]);
            }
            let resp = self
                .authed(req)
                .send()
                .await
                .map_err(|e| RegistryError::of_http("catalog", e))?;
            let status = resp.status().as_u16();
            if status >= 500 {
                return Err(RegistryError::Unavailable(format!(
                    "catalog: HTTP {status}"
                )));
            }
            if status != 200 {
                return Err(RegistryError::Refused(format!("catalog: HTTP {status}")));
            }
            let more = resp.headers().contains_key(reqwest::header::LINK);
            let page: Catalog = resp
                .json()
                .await
                .map_err(|e| RegistryError::Refused(shown(&format!("catalog: {e}"))))?;
            let next = page.repositories.last().cloned();
            out.extend(
                page.repositories
                    .into_iter()
                    .filter(|r| r.starts_with(&prefix)),
            );
            // A registry that ignores `last` would send the same page forever.
            if !more || next.is_none() || next <= last {
                return Ok(out);
            }
            last = next;
        }
        Err(RegistryError::Refused(format!(
            "catalog: more than {MAX_PAGES} pages"
        )))
    }

    /// The tags of `repository` (all pages).
    pub(crate) async fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        let r = self.reference(repository, "latest");
        let mut out: Vec<String> = Vec::new();
        for _ in 0..MAX_PAGES {
            let last = out.last().cloned();
            let page = self
                .oci
                .list_tags(&r, &self.auth, Some(1000), last.as_deref())
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    return match RegistryError::of(&format!("{repository} tags"), e) {
                        RegistryError::NotFound(_) => Ok(out),
                        other => Err(other),
                    };
                }
            };
            let n = page.tags.len();
            out.extend(page.tags);
            if n < 1000 || out.last().cloned() <= last {
                return Ok(out);
            }
        }
        Err(RegistryError::Refused(format!(
            "{repository} tags: more than {MAX_PAGES} pages"
        )))
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            RegistryAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
            RegistryAuth::Bearer(t) => req.bearer_auth(t),
            RegistryAuth::Anonymous => req,
        }
    }
}
