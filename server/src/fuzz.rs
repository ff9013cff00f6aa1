//! The fuzz targets of hsmd's parsers of untrusted input, one function each that takes
//! any bytes and must answer without panicking or hanging. `fuzz/` runs them under
//! AFL++ (`scripts/fuzz TARGET MINUTES`); the unit test below replays every seed and
//! every input a fuzzer once crashed on, so a fixed crash stays fixed.
//!
//! Not an API: public only so that the `fuzz/` crate can reach private parsers.

use audit_chain::fuzz::Target;
use uuid::Uuid;

use crate::api::kubernetes::parse_key_id;
use crate::auth::limits::Rate;
use crate::csr::san::{self, SanKind};
use crate::csr::{chain, subject};
use crate::domain::spec::KeySpec;
use crate::encoding::{oaep, public};
use crate::keys::{KeyRef, blob};
use crate::signing::reference::ImageRef;
use crate::signing::{cosign, events, rules};

/// Every target of this crate.
pub const TARGETS: &[Target] = &[
    Target {
        name: "subject",
        run: subject,
    },
    Target {
        name: "san",
        run: san,
    },
    Target {
        name: "cert_chain",
        run: cert_chain,
    },
    Target {
        name: "ciphertext_blob",
        run: ciphertext_blob,
    },
    Target {
        name: "oaep",
        run: oaep,
    },
    Target {
        name: "public_key_der",
        run: public_key_der,
    },
    Target {
        name: "policy",
        run: policy,
    },
    Target {
        name: "names",
        run: names,
    },
    Target {
        name: "signature_manifest",
        run: signature_manifest,
    },
    Target {
        name: "simple_signing",
        run: simple_signing,
    },
    Target {
        name: "scope_rule",
        run: scope_rule,
    },
    Target {
        name: "registry_events",
        run: registry_events,
    },
    Target {
        name: "image_reference",
        run: image_reference,
    },
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// RFC 4514 subjects of CreateCsr.
fn subject(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = subject::parse(s);
    }
}

/// SAN strings of CreateCsr; the first byte picks the kind.
fn san(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let kind = [SanKind::Dns, SanKind::Ip, SanKind::Uri, SanKind::Email][usize::from(k % 4)];
    if let Some(s) = text(rest) {
        let _ = san::parse(kind, s);
    }
}

/// PEM or DER certificate chains of ImportCertificate.
fn cert_chain(data: &[u8]) {
    let _ = chain::parse(data);
}

/// Ciphertext blobs of Decrypt and the KMS plugin; a blob that parses is written back
/// and must read the same.
fn ciphertext_blob(data: &[u8]) {
    if let Ok(b) = blob::parse(data) {
        let again = blob::assemble(
            &blob::header(b.key_id, b.key_version),
            b.iv,
            b.ciphertext_and_tag,
        );
        let back = blob::parse(&again).expect("a blob hsmd wrote parses");
        assert_eq!((back.key_id, back.key_version), (b.key_id, b.key_version));
    }
}

/// OAEP decoding of a raw RSA decryption (the host-side unwrap path of imports); the
/// first byte is the label's length.
fn oaep(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (label, em) = rest.split_at(usize::from(n).min(rest.len()));
    let _ = oaep::decode::<sha2::Sha256>(em, label);
    let _ = oaep::decode::<sha1::Sha1>(em, label);
}

/// The public key a caller sends with ImportKeyMaterial; the first byte picks the spec.
fn public_key_der(data: &[u8]) {
    let Some((&k, der)) = data.split_first() else {
        return;
    };
    let specs = [
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
        KeySpec::EcP256,
        KeySpec::EcP384,
        KeySpec::Ed25519,
    ];
    let _ = public::from_spki(specs[usize::from(k) % specs.len()], der);
}

/// The policy part of a config file (`[[policy.rules]]`, `[auth]`, `[rate_limits]`).
fn policy(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = crate::config::policy_from_toml(s);
    }
}

/// The short names callers send: key references, KMS plugin key ids, rates.
fn names(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = KeyRef::parse(s);
        let _ = Rate::parse(s);
        if let Some((id, v)) = parse_key_id(s) {
            let back = crate::api::kubernetes::key_id_of(id, v);
            assert_eq!(parse_key_id(&back), Some((id, v)));
        }
        let _ = Uuid::parse_str(s);
    }
}

/// A `.sig` manifest fetched from a registry: what is read writes back the same.
fn signature_manifest(data: &[u8]) {
    if let Ok(layers) = cosign::parse_signature_manifest(data) {
        let again = cosign::signature_manifest(&layers);
        assert_eq!(
            cosign::parse_signature_manifest(&again.manifest).as_ref(),
            Ok(&layers)
        );
    }
}

/// A simple-signing payload blob fetched from a registry: parse, write, parse again.
fn simple_signing(data: &[u8]) {
    if let Ok(p) = cosign::Payload::parse(data) {
        assert_eq!(cosign::Payload::parse(&p.to_bytes()).as_ref(), Ok(&p));
        let _ = cosign::Digest::parse(p.digest()).map(|d| d.signature_tag());
    }
}

/// A policy's selectors and schedule: the first line is a pattern (or a cron
/// expression), the rest candidates to match against it.
fn scope_rule(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    let (first, rest) = s.split_once('\n').unwrap_or((s, ""));
    let _ = rules::check_name(first);
    if let Ok(p) = rules::Pattern::new(first) {
        for candidate in rest.lines() {
            let _ = p.matches(candidate);
        }
    }
    if let Ok(c) = rules::Schedule::new(first) {
        let _ = c.next_after(time::OffsetDateTime::UNIX_EPOCH);
    }
}

/// The registry's notification envelopes (the push webhook's body): every event is
/// a push, ignored or malformed, none lost.
fn registry_events(data: &[u8]) {
    if let Ok(e) = events::parse(data) {
        assert!(e.pushes.len() + e.ignored + e.malformed.len() <= events::MAX_EVENTS);
        for p in &e.pushes {
            assert!(
                p.tag
                    .as_deref()
                    .is_none_or(|t| !events::is_cosign_artifact_tag(t))
            );
        }
    }
}

/// Image references of SignImage and VerifyImage: an accepted one names a namespaced,
/// valid repository and a tag or digest, and reads back the same when written out.
fn image_reference(data: &[u8]) {
    let Some(r) = text(data).and_then(|s| ImageRef::parse(s).ok()) else {
        return;
    };
    assert!(r.repository.contains('/') && !r.namespace().is_empty());
    assert!(r.tag.is_some() || r.digest.is_some());
    let mut again = String::new();
    if let Some(h) = &r.host {
        again.push_str(h);
        again.push('/');
    }
    again.push_str(&r.repository);
    if let Some(t) = &r.tag {
        again.push(':');
        again.push_str(t);
    }
    if let Some(d) = &r.digest {
        again.push('@');
        again.push_str(d.as_str());
    }
    assert_eq!(ImageRef::parse(&again).ok().as_ref(), Some(&r), "{again}");
}

#[cfg(test)]
mod tests {
    /// Every seed and every saved crash of every target, through its function.
    #[test]
    fn seeds_and_regressions_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let targets = crate::fuzz::TARGETS;
        assert!(audit_chain::fuzz::replay(&root, targets) >= targets.len());
    }
}
