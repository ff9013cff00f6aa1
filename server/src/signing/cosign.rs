//! cosign's key-based signature format, so that `cosign verify --key` and policy
//! controllers (Kyverno, sigstore policy-controller) accept what hsmd signs.
//!
//! A signature of the image manifest `sha256:<hex>` in repository `R` is stored in `R`
//! itself, as an OCI image manifest under the tag `sha256-<hex>.sig`. Each of its layers
//! is one signature: the layer's blob is the "simple signing" payload (JSON naming the
//! image and its digest), of media type [`SIMPLE_SIGNING`], and the layer's annotation
//! [`SIGNATURE_ANNOTATION`] holds the base64 signature over exactly those blob bytes.
//! Several signatures of one digest (two policies, a rotated key) are several layers of
//! the one `.sig` manifest. The manifest's config blob lists the layers' digests as its
//! `rootfs.diff_ids`, as any image config does.
//!
//! This module only encodes and decodes; signing is the token's, transport the
//! registry client's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

use super::shown;

/// Media type of a layer holding a simple-signing payload.
pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature over the layer's blob.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of every cosign image signature.
pub(crate) const SIGNATURE_TYPE: &str = "cosign container image signature";
/// Media type of the `.sig` manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of its config blob.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// What is wrong with a digest, payload or signature manifest read from a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("digest {0:?} is not sha256:<64 lower-case hex digits>")]
    Digest(String),
    #[error("simple-signing payload: {0}")]
    Payload(String),
    #[error("signature manifest: {0}")]
    Manifest(String),
}

/// A sha256 content digest, `sha256:<64 lower-case hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Digest(String);

impl Digest {
    /// Checks a digest as written in a manifest, event or reference.
    pub(crate) fn parse(s: &str) -> Result<Digest, FormatError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| FormatError::Digest(shown(s)))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Digest(s.to_string()))
        } else {
            Err(FormatError::Digest(shown(s)))
        }
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<hex>`.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag cosign stores this digest's signatures under: `sha256-<hex>.sig`.
    pub(crate) fn signature_tag(&self) -> String {
        format!("{}.sig", self.0.replacen(':', "-", 1))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The simple-signing payload: what a signature says about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) critical: Critical,
    /// Free-form facts (hsmd writes `policy` and `time`); cosign does not check them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) optional: Option<BTreeMap<String, serde_json::Value>>,
}

/// The part a verifier must check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Critical {
    pub(crate) identity: Identity,
    pub(crate) image: Image,
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

/// Which repository the signature is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// `registry-host[:port]/namespace/repository`, without tag or digest.
    #[serde(rename = "docker-reference")]
    pub(crate) docker_reference: String,
}

/// Which manifest the signature is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub(crate) docker_manifest_digest: String,
}

impl Payload {
    /// The payload hsmd signs for `digest` in `reference` under `policy` (empty: signed
    /// with an explicitly named key, for no policy), at `time` (RFC 3339).
    pub(crate) fn new(reference: &str, digest: &Digest, policy: &str, time: &str) -> Payload {
        let mut optional = BTreeMap::from([("time".to_string(), serde_json::Value::from(time))]);
        // Only a policy's signatures name it (a policy's deletion removes exactly those).
        if !policy.is_empty() {
            optional.insert("policy".to_string(), serde_json::Value::from(policy));
        }
        Payload {
            critical: Critical {
                identity: Identity {
                    docker_reference: reference.to_string(),
                },
                image: Image {
                    docker_manifest_digest: digest.as_str().to_string(),
                },
                kind: SIGNATURE_TYPE.to_string(),
            },
            optional: Some(optional),
        }
    }

    /// The exact bytes that are signed and stored as the layer's blob.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs and string maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload blob and checks what a verifier relies on: the signature type
    /// and a well-formed digest.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Payload, FormatError> {
        let p: Payload =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Payload(e.to_string()))?;
        if p.critical.kind != SIGNATURE_TYPE {
            return Err(FormatError::Payload(format!(
                "critical.type is {:?}, not {SIGNATURE_TYPE:?}",
                shown(&p.critical.kind)
            )));
        }
        Digest::parse(&p.critical.image.docker_manifest_digest)?;
        Ok(p)
    }

    /// The digest the payload vouches for (checked by `parse`).
    pub(crate) fn digest(&self) -> &str {
        &self.critical.image.docker_manifest_digest
    }

    /// The policy that made it, if hsmd did.
    pub(crate) fn policy(&self) -> Option<&str> {
        self.optional.as_ref()?.get("policy")?.as_str()
    }
}

/// One layer of a `.sig` manifest: a payload blob's descriptor and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureLayer {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// Base64 of the signature bytes, as the annotation holds it.
    pub(crate) signature: String,
}

impl SignatureLayer {
    /// The layer for `payload` (its bytes) signed with `signature` (raw bytes: DER
    /// ECDSA or PKCS#1 v1.5, as the key signs).
    pub(crate) fn new(payload: &[u8], signature: &[u8]) -> SignatureLayer {
        SignatureLayer {
            digest: Digest::of(payload),
            size: payload.len() as u64,
            signature: STANDARD.encode(signature),
        }
    }

    /// The signature's bytes (None if the annotation is not base64).
    pub(crate) fn signature_bytes(&self) -> Option<Vec<u8>> {
        STANDARD.decode(self.signature.trim()).ok()
    }
}

/// A layer descriptor. Fields hsmd does not know are kept (`other`), and so are every
/// annotation, so a layer another signer wrote goes back to the registry as it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// A `.sig` manifest and its config blob, ready to push (blobs first, then the
/// manifest under [`Digest::signature_tag`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureManifest {
    pub(crate) manifest: Vec<u8>,
    pub(crate) config: Vec<u8>,
}

/// Most layers read from one `.sig` manifest (each signature costs a blob fetch).
pub(crate) const MAX_LAYERS: usize = 64;

/// The layers of a `.sig` manifest as the registry holds them. hsmd changes a manifest
/// only by adding or removing whole signature layers: cosign's bundle and certificate
/// annotations, attachments of other media types and unknown fields of other signers
/// are written back as they came.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SignatureSet {
    layers: Vec<(Descriptor, Option<SignatureLayer>)>,
    other: BTreeMap<String, serde_json::Value>,
}

impl SignatureSet {
    /// Reads a fetched manifest. A simple-signing layer without a signature annotation,
    /// or with a bad digest, is an error: a verifier must not skip what it cannot read.
    pub(crate) fn parse(bytes: &[u8]) -> Result<SignatureSet, FormatError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Manifest(e.to_string()))?;
        if m.schema_version != 2 {
            return Err(FormatError::Manifest(format!(
                "schemaVersion {} (expected 2)",
                m.schema_version
            )));
        }
        if m.layers.len() > MAX_LAYERS {
            return Err(FormatError::Manifest(format!(
                "{} layers (at most {MAX_LAYERS} are read)",
                m.layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(m.layers.len());
        for d in m.layers {
            let signature = if d.media_type == SIMPLE_SIGNING {
                let signature = d
                    .annotations
                    .get(SIGNATURE_ANNOTATION)
                    .cloned()
                    .ok_or_else(|| {
                        FormatError::Manifest(format!(
                            "layer {} has no {SIGNATURE_ANNOTATION} annotation",
                            shown(&d.digest)
                        ))
                    })?;
                Some(SignatureLayer {
                    digest: Digest::parse(&d.digest)?,
                    size: d.size,
                    signature,
                })
            } else {
                None
            };
            layers.push((d, signature));
        }
        Ok(SignatureSet {
            layers,
            other: m.other,
        })
    }

    /// The signatures, in manifest order.
    pub(crate) fn signatures(&self) -> impl Iterator<Item = &SignatureLayer> {
        self.layers.iter().filter_map(|(_, s)| s.as_ref())
    }

    /// Adds a signature layer at the end.
    pub(crate) fn push(&mut self, layer: SignatureLayer) {
        let descriptor = Descriptor {
            media_type: SIMPLE_SIGNING.to_string(),
            size: layer.size,
            digest: layer.digest.0.clone(),
            annotations: BTreeMap::from([(
                SIGNATURE_ANNOTATION.to_string(),
                layer.signature.clone(),
            )]),
            other: BTreeMap::new(),
        };
        self.layers.push((descriptor, Some(layer)));
    }

    /// Removes the signature layers `drop` selects; returns how many went.
    pub(crate) fn remove(&mut self, mut drop: impl FnMut(&SignatureLayer) -> bool) -> usize {
        let before = self.layers.len();
        self.layers
            .retain(|(_, s)| !s.as_ref().is_some_and(&mut drop));
        before - self.layers.len()
    }

    /// True when no layer is left (the manifest is then deleted, not written).
    pub(crate) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The manifest and its config blob (whose `rootfs.diff_ids` list the layers).
    pub(crate) fn encode(&self) -> SignatureManifest {
        let diff_ids: Vec<&str> = self.layers.iter().map(|(d, _)| d.digest.as_str()).collect();
        let config = serde_json::json!({
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let manifest = Manifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            config: Descriptor {
                media_type: OCI_CONFIG.to_string(),
                size: config.len() as u64,
                digest: Digest::of(&config).0,
                annotations: BTreeMap::new(),
                other: BTreeMap::new(),
            },
            layers: self.layers.iter().map(|(d, _)| d.clone()).collect(),
            other: self.other.clone(),
        };
        SignatureManifest {
            manifest: serde_json::to_vec(&manifest).unwrap_or_default(),
            config,
        }
    }
}

/// Encodes a new `.sig` manifest holding `layers`, in that order.
pub(crate) fn signature_manifest(layers: &[SignatureLayer]) -> SignatureManifest {
    let mut set = SignatureSet::default();
    for l in layers {
        set.push(l.clone());
    }
    set.encode()
}

/// The signature layers of a `.sig` manifest as fetched (layers of other media types,
/// cosign's attachments, are skipped).
pub(crate) fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<SignatureLayer>, FormatError> {
    Ok(SignatureSet::parse(bytes)?.signatures().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use p256::ecdsa::{DerSignature, SigningKey};

    fn digest() -> Digest {
        Digest::of(b"an image manifest")
    }

    #[test]
    fn digests_are_checked_and_name_their_tag() {
        let d = digest();
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        let hex = &d.as_str()["sha256:".len()..];
        assert_eq!(d.signature_tag(), format!("sha256-{hex}.sig"));
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            &format!("sha256:{}", hex.to_uppercase()),
            &format!("sha256:{}0", hex),
            &format!("sha256:{}", &hex[1..]),
            &format!("sha256:{}g", &hex[1..]),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn payload_names_image_and_digest_in_cosign_layout() {
        let p = Payload::new(
            "127.0.0.1:5000/team/app-web",
            &digest(),
            "team-policy",
            "2026-12-06T17:00:00Z",
        );
        let bytes = p.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["critical"]["identity"]["docker-reference"],
            "127.0.0.1:5000/team/app-web"
        );
        assert_eq!(
            v["critical"]["image"]["docker-manifest-digest"],
            digest().as_str()
        );
        assert_eq!(v["critical"]["type"], SIGNATURE_TYPE);
        assert_eq!(v["optional"]["policy"], "team-policy");
        assert_eq!(v["optional"]["time"], "2026-12-06T17:00:00Z");
        let back = Payload::parse(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.policy(), Some("team-policy"));
        assert_eq!(back.digest(), digest().as_str());
        // The same payload always encodes to the same bytes (what is signed).
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn payloads_of_other_kinds_or_bad_digests_are_refused() {
        let mut p = Payload::new("r/x", &digest(), "p", "t");
        p.critical.kind = "atomic container signature".into();
        assert!(matches!(
            Payload::parse(&p.to_bytes()),
            Err(FormatError::Payload(_))
        ));
        let mut p = Payload::new("r/x", &digest(), "p", "t");
        p.critical.image.docker_manifest_digest = "sha256:zz".into();
        assert!(matches!(
            Payload::parse(&p.to_bytes()),
            Err(FormatError::Digest(_))
        ));
        assert!(Payload::parse(b"{}").is_err());
        assert!(Payload::parse(b"not json").is_err());
        // A payload without `optional` (cosign's own, unannotated) is fine.
        let plain = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/x"}},"image":{{"docker-manifest-digest":"{}"}},"type":"{SIGNATURE_TYPE}"}},"optional":null}}"#,
            digest()
        );
        assert_eq!(Payload::parse(plain.as_bytes()).unwrap().policy(), None);
    }

    #[test]
    fn manifest_round_trips_several_signatures_that_verify() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let payloads: Vec<Vec<u8>> = ["one", "two"]
            .iter()
            .map(|policy| Payload::new("r/x", &digest(), policy, "t").to_bytes())
            .collect();
        let layers: Vec<SignatureLayer> = payloads
            .iter()
            .map(|p| {
                let sig: DerSignature = key.sign(p);
                SignatureLayer::new(p, sig.as_bytes())
            })
            .collect();
        let m = signature_manifest(&layers);
        let v: serde_json::Value = serde_json::from_slice(&m.manifest).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_MANIFEST);
        assert_eq!(v["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(v["config"]["digest"], Digest::of(&m.config).as_str());
        assert_eq!(v["config"]["size"], m.config.len());
        assert_eq!(v["layers"][1]["mediaType"], SIMPLE_SIGNING);
        let cfg: serde_json::Value = serde_json::from_slice(&m.config).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], layers[0].digest.as_str());

        let back = parse_signature_manifest(&m.manifest).unwrap();
        assert_eq!(back, layers);
        for (layer, payload) in back.iter().zip(&payloads) {
            assert_eq!(layer.digest, Digest::of(payload));
            let sig = DerSignature::from_bytes(&layer.signature_bytes().unwrap()).unwrap();
            key.verifying_key().verify(payload, &sig).unwrap();
        }
    }

    /// A `.sig` manifest docker-registry 2.8.2 accepted (pushed with curl; its
    /// signature, by an openssl P-256 key, verified with `openssl dgst -verify` from the
    /// registry's own blobs): what this module writes for its layer is byte for byte
    /// the same manifest.
    #[test]
    fn writes_the_manifest_a_real_registry_accepted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/signature_manifest/accepted-by-docker-registry-2.8.2.json");
        let real = std::fs::read(path).unwrap();
        let layers = parse_signature_manifest(&real).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(signature_manifest(&layers).manifest, real);
    }

    #[test]
    fn other_signers_layers_and_annotations_survive_a_rewrite() {
        let ours = SignatureLayer::new(b"payload", b"sig");
        let m = signature_manifest(std::slice::from_ref(&ours));
        let mut v: serde_json::Value = serde_json::from_slice(&m.manifest).unwrap();
        v["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"] = "{\"rekor\":1}".into();
        v["layers"][0]["annotations"]["dev.sigstore.cosign/certificate"] = "PEM".into();
        v["layers"][0]["urls"] = serde_json::json!(["https://x"]);
        let attachment = serde_json::json!({"mediaType": "application/vnd.dev.sigstore.bundle+json",
            "size": 3, "digest": Digest::of(b"abc").as_str()});
        v["layers"].as_array_mut().unwrap().push(attachment.clone());
        v["subject"] = serde_json::json!({"digest": "sha256:00"});
        let mut set = SignatureSet::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(set.signatures().count(), 1);
        let added = SignatureLayer::new(b"payload 2", b"sig 2");
        set.push(added.clone());
        let out: serde_json::Value = serde_json::from_slice(&set.encode().manifest).unwrap();
        assert_eq!(out["layers"][0], v["layers"][0], "foreign annotations kept");
        assert_eq!(out["layers"][1], attachment, "attachment kept");
        assert_eq!(out["layers"][2]["digest"], added.digest.as_str());
        assert_eq!(out["subject"], v["subject"]);
        assert_eq!(set.remove(|l| l.digest == added.digest), 1);
        assert_eq!(set.remove(|l| l.digest == ours.digest), 1);
        assert!(!set.is_empty(), "the attachment is still there");
        let cfg: serde_json::Value = serde_json::from_slice(&set.encode().config).unwrap();
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            serde_json::json!([Digest::of(b"abc").as_str()])
        );
    }

    #[test]
    fn manifests_missing_what_a_verifier_needs_are_refused() {
        let layer = SignatureLayer::new(b"payload", b"sig");
        let m = signature_manifest(std::slice::from_ref(&layer));
        let mut v: serde_json::Value = serde_json::from_slice(&m.manifest).unwrap();
        v["layers"][0]["annotations"] = serde_json::json!({});
        let no_sig = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            parse_signature_manifest(&no_sig),
            Err(FormatError::Manifest(_))
        ));
        v["schemaVersion"] = 1.into();
        assert!(parse_signature_manifest(&serde_json::to_vec(&v).unwrap()).is_err());
        // Attachments of other media types are not signatures, and are skipped.
        let mut v: serde_json::Value = serde_json::from_slice(&m.manifest).unwrap();
        v["layers"][0]["mediaType"] = "application/vnd.dev.sigstore.bundle+json".into();
        let other = serde_json::to_vec(&v).unwrap();
        assert!(parse_signature_manifest(&other).unwrap().is_empty());
        assert!(parse_signature_manifest(b"[]").is_err());
    }
}
