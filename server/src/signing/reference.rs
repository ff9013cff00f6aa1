//! Image references as users write them: `HOST[:PORT]/NAMESPACE/REPO:TAG` or
//! `...@sha256:HEX` (the host may be left out for the configured registry). The host is
//! the first path segment when it has a `.` or a `:` or is `localhost`, as docker reads
//! references.

use super::cosign::Digest;
use super::events::{valid_repository, valid_tag};
use super::{SigningError, shown};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// `host[:port]`, if the reference names one.
    pub(crate) host: Option<String>,
    /// The full repository, `namespace/repo...`.
    pub(crate) repository: String,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; it must name a tag or a digest (or both).
    pub(crate) fn parse(text: &str) -> Result<ImageRef, SigningError> {
        let bad = |why: &str| {
            SigningError::Reference(format!(
                "image reference {:?} is invalid: {why} (expected HOST:PORT/NAMESPACE/REPO:TAG or ...@sha256:HEX)",
                shown(text)
            ))
        };
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e.to_string()))?)),
            None => (text, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, rest),
        };
        // A tag follows the last ':' after the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if !valid_repository(repository) {
            return Err(bad("the repository is not a valid name"));
        }
        if !repository.contains('/') {
            return Err(bad("the repository has no namespace (NAMESPACE/REPO)"));
        }
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(bad("the tag is not valid"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("name a tag or a digest"));
        }
        Ok(ImageRef {
            host,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The namespace: the repository's first path segment.
    pub(crate) fn namespace(&self) -> &str {
        self.repository.split('/').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = ImageRef::parse("127.0.0.1:5000/team/app-web:v1").unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("team/app-web", Some("v1"))
        );
        assert_eq!(r.namespace(), "team");
        let r = ImageRef::parse(&format!("localhost/team/a/b@{d}")).unwrap();
        assert_eq!((r.repository.as_str(), r.tag), ("team/a/b", None));
        assert_eq!(r.digest.unwrap().as_str(), d);
        let r = ImageRef::parse("team/app:v1").unwrap();
        assert_eq!(r.host, None);
        for bad in [
            "team/app",
            "app:v1",
            "r.example/app:v1",
            "team/App:v1",
            "team/app:v/1",
            "team/app@sha256:12",
            "",
            "team//app:v1",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert_eq!(
                e.reason(),
                crate::domain::reason::Reason::InvalidImageReference,
                "{bad}"
            );
        }
    }
}
