//! Who is calling and what they may do: the principal from the client certificate
//! (its SAN URI, else its subject CN), the authorization policy (`policy.rs`: who may
//! do which action on which keys) and the rate limits (`limits.rs`). The policy and the
//! limits are swapped whole on a config reload; calls in flight keep the policy they
//! started with.

pub(crate) mod action;
pub(crate) mod connections;
pub(crate) mod glob;
pub(crate) mod limits;
pub(crate) mod policy;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub(crate) use action::{Action, LimitClass};
pub(crate) use connections::{ConnectionLimits, Slot};
pub(crate) use limits::{Rate, RateLimiter, SharedBuckets};
pub(crate) use policy::{KeyFacts, Policy, RawRule, Rule};

use der::Decode;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// OID of the subject common name (2.5.4.3).
const CN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// Certificates whose principal was already read, at most this many (then the memo
/// starts over): clients present the same certificate on every call of a connection.
const PRINCIPAL_MEMO: usize = 1024;

/// `principal_from_cert`, remembered per certificate (its DER bytes), so a call does not
/// decode the whole X.509 structure again (a visible share of per-call CPU under load).
/// The principal is a pure function of the bytes, which TLS has already verified.
pub(crate) fn principal_of(der_bytes: &[u8]) -> Option<String> {
    type Memo = RwLock<HashMap<Vec<u8>, Option<String>>>;
    static MEMO: std::sync::OnceLock<Memo> = std::sync::OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Some(p) = memo
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(der_bytes)
    {
        return p.clone();
    }
    let principal = principal_from_cert(der_bytes);
    let mut w = memo.write().unwrap_or_else(|p| p.into_inner());
    if w.len() >= PRINCIPAL_MEMO {
        w.clear();
    }
    w.insert(der_bytes.to_vec(), principal.clone());
    principal
}

/// The principal named by a DER client certificate: its first SAN URI, else its CN.
/// Names hsmd gives its own callers are never taken from a certificate: `hsmd` (the
/// sweeps' records) and `kubernetes:...` (the KMS plugin socket); such a certificate has
/// no identity (UNAUTHENTICATED).
pub(crate) fn principal_from_cert(der_bytes: &[u8]) -> Option<String> {
    principal_named(der_bytes).filter(|p| !is_reserved_principal(p))
}

/// True for the principals only hsmd itself names.
pub(crate) fn is_reserved_principal(p: &str) -> bool {
    p == crate::domain::SYSTEM_PRINCIPAL || p.starts_with("kubernetes:")
}

fn principal_named(der_bytes: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(der_bytes).ok()?;
    let tbs = &cert.tbs_certificate;
    if let Ok(Some((_, san))) = tbs.get::<SubjectAltName>() {
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                return Some(uri.to_string());
            }
        }
    }
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                return directory_string(&atv.value);
            }
        }
    }
    None
}

fn directory_string(any: &der::Any) -> Option<String> {
    if let Ok(s) = any.decode_as::<der::asn1::Utf8StringRef<'_>>() {
        return Some(s.to_string());
    }
    if let Ok(s) = any.decode_as::<der::asn1::PrintableStringRef<'_>>() {
        return Some(s.to_string());
    }
    any.decode_as::<der::asn1::Ia5StringRef<'_>>()
        .ok()
        .map(|s| s.to_string())
}

/// The policy in force and the rate limiter.
#[derive(Debug)]
pub(crate) struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    limits: RateLimiter,
    connections: Arc<ConnectionLimits>,
}

impl Authorizer {
    pub(crate) fn new(
        policy: Policy,
        limits: HashMap<LimitClass, Rate>,
        connections: Arc<ConnectionLimits>,
    ) -> Self {
        Authorizer {
            policy: RwLock::new(Arc::new(policy)),
            limits: RateLimiter::new(limits),
            connections,
        }
    }

    /// Rate limits per cluster: the buckets are `shared`'s.
    pub(crate) fn with_shared_limits(mut self, shared: Arc<dyn SharedBuckets>) -> Self {
        self.limits = self.limits.shared(shared);
        self
    }

    /// The open connections of each principal (`tls.max_connections_per_principal`).
    pub(crate) fn connections(&self) -> &Arc<ConnectionLimits> {
        &self.connections
    }

    /// The policy in force (a call keeps the one it started with).
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The rate limiter.
    pub(crate) fn limits(&self) -> &RateLimiter {
        &self.limits
    }

    /// Swaps in a new policy and new limits (config reload).
    pub(crate) fn replace(&self, policy: Policy, limits: HashMap<LimitClass, Rate>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.limits.set_limits(limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(san_uri: Option<&str>, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(u) = san_uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn san_uri_wins_over_cn() {
        assert_eq!(
            principal_from_cert(&cert(Some("spiffe://corp/payments"), "pay")).as_deref(),
            Some("spiffe://corp/payments")
        );
        assert_eq!(
            principal_from_cert(&cert(None, "batch-job")).as_deref(),
            Some("batch-job")
        );
        assert_eq!(principal_from_cert(b"not a cert"), None);
        let der = cert(Some("spiffe://corp/memo"), "m");
        for _ in 0..2 {
            assert_eq!(
                principal_of(&der).as_deref(),
                Some("spiffe://corp/memo"),
                "the remembered principal is the decoded one"
            );
        }
        assert_eq!(principal_of(b"still not a cert"), None);
    }
}
