//! The registry's push notifications: the CNCF distribution registry POSTs an envelope
//! (`application/vnd.docker.distribution.events.v1+json`) of events to the webhook.
//! Only manifest pushes matter for signing; blob pushes, pulls and deletes are skipped,
//! and so are pushes of cosign's own artifacts (`sha256-<hex>.sig`, `.att`, `.sbom`
//! tags), so that a signature never triggers signing.
//!
//! Each event is read on its own: one malformed event is reported and the valid events
//! of the same envelope are kept. Only a body that is not an envelope at all is refused
//! as a whole (the webhook answers 400).

use serde_json::Value;

use super::cosign::Digest;
use super::shown;

/// Manifest media types a push of an image (or image index) carries.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Longest event id accepted.
const MAX_ID: usize = 128;

/// Most events read from one envelope (the registry sends a handful at a time).
pub(crate) const MAX_EVENTS: usize = 1000;

/// A body that is not an event envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("event envelope is not JSON: {0}")]
    Json(String),
    #[error("event envelope has no \"events\" array")]
    NoEvents,
    #[error("event envelope holds {0} events (at most {MAX_EVENTS})")]
    TooMany(usize),
}

/// A manifest pushed into a namespace: what a policy is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Push {
    /// The registry's event id (the key that makes handling an event idempotent).
    pub(crate) id: String,
    /// The namespace: the repository's first path segment (`team` of `team/app-web`).
    pub(crate) namespace: String,
    /// The repository below the namespace (`app-web`).
    pub(crate) repository: String,
    pub(crate) digest: Digest,
    /// None when the manifest was pushed by digest only.
    pub(crate) tag: Option<String>,
    pub(crate) media_type: String,
}

impl Push {
    /// `namespace/repository`, as the registry names it.
    pub(crate) fn full_repository(&self) -> String {
        format!("{}/{}", self.namespace, self.repository)
    }
}

/// What one envelope held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// Manifest pushes to consider for signing, in the envelope's order.
    pub(crate) pushes: Vec<Push>,
    /// Events that are not manifest pushes into a namespace, or are pushes of
    /// signature artifacts: nothing to do.
    pub(crate) ignored: usize,
    /// Events that could not be read: their index in the envelope and why.
    pub(crate) malformed: Vec<(usize, String)>,
}

/// Reads an envelope.
pub(crate) fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::Json(e.to_string()))?;
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .ok_or(EnvelopeError::NoEvents)?;
    if events.len() > MAX_EVENTS {
        return Err(EnvelopeError::TooMany(events.len()));
    }
    let mut out = Envelope::default();
    for (i, ev) in events.iter().enumerate() {
        match event(ev) {
            Ok(Some(p)) => out.pushes.push(p),
            Ok(None) => out.ignored += 1,
            Err(why) => out.malformed.push((i, why)),
        }
    }
    Ok(out)
}

/// Whether a tag names one of cosign's artifacts (`sha256-<64 hex>.sig|.att|.sbom`).
pub(crate) fn is_cosign_artifact_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let Some((hex, suffix)) = rest.split_once('.') else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && matches!(suffix, "sig" | "att" | "sbom")
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no string {key:?}"))
}

/// One event: Some(push) to consider, None to ignore, Err if it cannot be read.
fn event(ev: &Value) -> Result<Option<Push>, String> {
    let action = text(ev, "action")?;
    if action != "push" {
        return Ok(None);
    }
    let id = text(ev, "id")?;
    let target = ev.get("target").ok_or("no \"target\"")?;
    let media_type = text(target, "mediaType")?;
    if !MANIFEST_TYPES.contains(&media_type) {
        return Ok(None);
    }
    let repository = text(target, "repository")?;
    let digest = Digest::parse(text(target, "digest")?).map_err(|e| e.to_string())?;
    let tag = match target.get("tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err("\"tag\" is not a string".into()),
    };
    if !valid_repository(repository) {
        return Err(format!(
            "repository {:?} is not a valid name",
            shown(repository)
        ));
    }
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(format!("tag {:?} is not a valid tag", shown(t)));
        }
        if is_cosign_artifact_tag(t) {
            return Ok(None);
        }
    }
    // Registry event ids are UUIDs; the queue keys on them, so a long one is refused
    // rather than cut (two cut ids could collide).
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("id is {} bytes (1..{MAX_ID})", id.len()));
    }
    let Some((namespace, below)) = repository.split_once('/') else {
        // A repository outside any namespace is in no policy's scope.
        return Ok(None);
    };
    Ok(Some(Push {
        id: id.to_string(),
        namespace: namespace.to_string(),
        repository: below.to_string(),
        digest,
        tag,
        media_type: media_type.to_string(),
    }))
}

/// The distribution spec's repository name: path components of `[a-z0-9]+` joined by
/// `.`, `_`, `__` or `-`s, separated by `/`, at most 255 characters.
pub(crate) fn valid_repository(r: &str) -> bool {
    r.len() <= 255
        && !r.is_empty()
        && r.split('/').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
                })
        })
}

/// The distribution spec's tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(b"manifest")
    }

    fn push(repo: &str, tag: Option<&str>, media: &str) -> Value {
        let mut target = serde_json::json!({
            "mediaType": media, "size": 708, "digest": digest().as_str(),
            "repository": repo, "url": "http://127.0.0.1:5000/v2/x/manifests/y",
        });
        if let Some(t) = tag {
            target["tag"] = t.into();
        }
        serde_json::json!({
            "id": format!("ev-{repo}-{}", tag.unwrap_or("")), "timestamp": "2026-12-06T17:00:00Z",
            "action": "push", "target": target,
            "request": {"method": "PUT"}, "actor": {}, "source": {"addr": "registry:5000"},
        })
    }

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn envelope(events: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
    }

    #[test]
    fn manifest_pushes_are_read_with_namespace_and_tag() {
        let body = envelope(vec![
            push("team/app-web", Some("v1"), OCI),
            push(
                "team/sub/app",
                None,
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
        ]);
        let e = parse(&body).unwrap();
        assert_eq!(e.ignored, 0);
        assert!(e.malformed.is_empty());
        assert_eq!(
            e.pushes[0],
            Push {
                id: "ev-team/app-web-v1".into(),
                namespace: "team".into(),
                repository: "app-web".into(),
                digest: digest(),
                tag: Some("v1".into()),
                media_type: OCI.into(),
            }
        );
        assert_eq!(e.pushes[0].full_repository(), "team/app-web");
        assert_eq!(e.pushes[1].repository, "sub/app");
        assert_eq!(e.pushes[1].tag, None);
    }

    #[test]
    fn blobs_pulls_signatures_and_unnamespaced_repos_are_ignored() {
        let sig_tag = digest().signature_tag();
        let mut pull = push("team/app", Some("v1"), OCI);
        pull["action"] = "pull".into();
        let body = envelope(vec![
            push("team/app", Some("v1"), "application/octet-stream"),
            pull,
            push("team/app", Some(&sig_tag), OCI),
            push("team/app", Some(&sig_tag.replace(".sig", ".att")), OCI),
            push("app", Some("v1"), OCI),
        ]);
        let e = parse(&body).unwrap();
        assert!(e.pushes.is_empty(), "{:?}", e.pushes);
        assert_eq!(e.ignored, 5);
        assert!(is_cosign_artifact_tag(&sig_tag));
        assert!(!is_cosign_artifact_tag("sha256-abc.sig"));
        assert!(!is_cosign_artifact_tag("v1.sig"));
    }

    #[test]
    fn a_malformed_event_does_not_lose_the_valid_ones() {
        let mut bad_digest = push("team/app", Some("v2"), OCI);
        bad_digest["target"]["digest"] = "sha256:nothex".into();
        let mut bad_repo = push("team/App", Some("v3"), OCI);
        bad_repo["target"]["repository"] = "team/App".into();
        let body = envelope(vec![
            push("team/app", Some("v1"), OCI),
            serde_json::json!("not an object"),
            bad_digest,
            bad_repo,
            push("team/app", Some("bad tag!"), OCI),
            serde_json::json!({"action": "push", "target": {}}),
            push("team/app", Some("v4"), OCI),
        ]);
        let e = parse(&body).unwrap();
        let tags: Vec<_> = e.pushes.iter().map(|p| p.tag.as_deref().unwrap()).collect();
        assert_eq!(tags, ["v1", "v4"]);
        let at: Vec<usize> = e.malformed.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn bodies_that_are_no_envelope_are_refused_whole() {
        assert!(matches!(parse(b"nope"), Err(EnvelopeError::Json(_))));
        assert_eq!(parse(b"{}"), Err(EnvelopeError::NoEvents));
        assert_eq!(parse(br#"{"events":{}}"#), Err(EnvelopeError::NoEvents));
        let many = envelope(vec![serde_json::json!({}); MAX_EVENTS + 1]);
        assert_eq!(parse(&many), Err(EnvelopeError::TooMany(MAX_EVENTS + 1)));
        assert_eq!(parse(br#"{"events":[]}"#).unwrap(), Envelope::default());
    }

    /// Envelopes docker-registry 2.8.2 (Debian 12) really sent: a layer push, an image
    /// pushed with skopeo 1.9.3, and a cosign-format `.sig` manifest pushed with curl.
    #[test]
    fn envelopes_of_the_real_registry() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/registry_events");
        let read = |name: &str| parse(&std::fs::read(seeds.join(name)).unwrap()).unwrap();
        let blob = read("docker-registry-2.8.2-blob-push.json");
        assert_eq!((blob.pushes.len(), blob.ignored), (0, 1));
        let image = read("docker-registry-2.8.2-manifest-push.json");
        assert_eq!(image.ignored, 0);
        assert!(image.malformed.is_empty());
        let p = &image.pushes[0];
        assert_eq!(
            (p.namespace.as_str(), p.repository.as_str()),
            ("team", "app-web")
        );
        assert_eq!(p.tag.as_deref(), Some("v1"));
        assert_eq!(
            p.digest.as_str(),
            "sha256:9ce7d1c1d65aa97d05c82af0c3b344ef095579d40f12fc6a7d9e7a82a99650d9"
        );
        let sig = read("docker-registry-2.8.2-signature-push.json");
        assert_eq!((sig.pushes.len(), sig.ignored), (0, 1));
    }

    #[test]
    fn repository_and_tag_names_follow_the_distribution_spec() {
        for ok in ["a/b", "team/app-web", "a.b/c__d", "x/y/z"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "",
            "A/b",
            "a//b",
            "/a",
            "a/",
            "-a/b",
            "a/b-",
            &"a".repeat(256),
        ] {
            assert!(!valid_repository(bad), "{bad:?}");
        }
        for ok in ["v1", "_x", "V1.2-rc_3", &"t".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a b", &"t".repeat(129)] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
    }
}
