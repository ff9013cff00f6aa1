//! Image signing for container registries: signature policies per registry namespace,
//! signing on push and on request, and verification, in cosign's format.
//!
//! - `cosign`: the signature format (the `.sig` manifest, the simple-signing payload);
//! - `rules`: what a policy may say (its name, doublestar scopes, cron schedules);
//! - `policy`: a stored policy checked and compiled, and the key it may sign with;
//! - `events`: the registry's push notifications, parsed;
//! - `config` and `registry`: the `[registry]` section and the client that talks to it;
//! - `signer`: signing and verifying one image, and removing a policy's signatures;
//! - `worker`: the durable queue of pushes, signed in order, retried with backoff, and
//!   the scheduled policies' runs;
//! - `webhook`: the HTTP endpoint the registry notifies (`POST /registry/events`).

pub(crate) mod config;
pub(crate) mod cosign;
pub(crate) mod events;
pub(crate) mod policy;
pub(crate) mod reference;
pub(crate) mod registry;
pub(crate) mod rules;
pub(crate) mod signer;
pub(crate) mod webhook;
pub(crate) mod worker;

use crate::domain::reason::Reason;
use crate::keys::KeyError;
use crate::store::StoreError;

/// Caller or registry text echoed into an error, capped as every error of hsmd caps it.
fn shown(s: &str) -> String {
    crate::keys::truncate(s, 80)
}

/// Every way a policy or image-signing operation can fail. Key errors (not found,
/// disabled, wrong usage...) keep their own variant and reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SigningError {
    #[error(transparent)]
    Rule(#[from] rules::RuleError),
    #[error(
        "namespace {0:?} is invalid: lower-case letters, digits and . _ - (a repository's first path segment)"
    )]
    Namespace(String),
    #[error("{0}")]
    Reference(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "namespace {0:?} already has a signature policy (one per namespace): update it instead"
    )]
    PolicyExists(String),
    #[error("namespace {0:?} has no signature policy")]
    PolicyNotFound(String),
    #[error("the policy of namespace {0:?} was changed by another call meanwhile; retry")]
    PolicyChanged(String),
    #[error(
        "key {key} is {spec}; images are signed with RSA_2048/3072/4096 (RSA_PKCS1_SHA_256), \
         EC_P256 (ECDSA_SHA_256) or EC_P384 (ECDSA_SHA_384) keys"
    )]
    KeySpecNotAllowed { key: uuid::Uuid, spec: &'static str },
    #[error("the signature policy of namespace {0:?} is disabled: enable it, or name a key")]
    PolicyDisabled(String),
    #[error(
        "{0} is outside its namespace's policy (repositories, tags, untagged): name a key to sign it anyway"
    )]
    OutOfScope(String),
    #[error("image {0} not found in the registry")]
    ImageNotFound(String),
    #[error("no registry is configured ([registry] url, or hsmd dev --registry URL)")]
    RegistryNotConfigured,
    #[error("{0}")]
    Registry(registry::RegistryError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<StoreError> for SigningError {
    fn from(e: StoreError) -> Self {
        SigningError::Key(KeyError::from(e))
    }
}

impl From<registry::RegistryError> for SigningError {
    fn from(e: registry::RegistryError) -> Self {
        match e {
            registry::RegistryError::NotFound(what) => SigningError::ImageNotFound(what),
            other => SigningError::Registry(other),
        }
    }
}

impl SigningError {
    /// Stable reason (google.rpc.ErrorInfo.reason).
    pub(crate) fn reason(&self) -> Reason {
        use registry::RegistryError as R;
        match self {
            SigningError::Rule(rules::RuleError::Name(_)) => Reason::InvalidPolicyName,
            SigningError::Rule(rules::RuleError::Pattern { .. }) => Reason::InvalidScopeRule,
            SigningError::Rule(rules::RuleError::Cron { .. }) => Reason::InvalidSchedule,
            SigningError::Namespace(_) => Reason::InvalidNamespace,
            SigningError::Reference(_) => Reason::InvalidImageReference,
            SigningError::InvalidArgument(_) => Reason::InvalidArgument,
            SigningError::PolicyExists(_) => Reason::PolicyExists,
            SigningError::PolicyNotFound(_) => Reason::PolicyNotFound,
            SigningError::PolicyChanged(_) => Reason::PolicyChanged,
            SigningError::KeySpecNotAllowed { .. } => Reason::KeySpecNotAllowed,
            SigningError::ImageNotFound(_) => Reason::ImageNotFound,
            SigningError::PolicyDisabled(_) => Reason::PolicyDisabled,
            SigningError::OutOfScope(_) => Reason::ImageOutOfScope,
            SigningError::RegistryNotConfigured => Reason::RegistryNotConfigured,
            SigningError::Registry(R::Unavailable(_)) => Reason::RegistryUnavailable,
            SigningError::Registry(_) => Reason::RegistryRefused,
            SigningError::Key(k) => k.reason(),
        }
    }

    /// True if trying again later may succeed (the registry or the token was down).
    pub(crate) fn is_transient(&self) -> bool {
        self.reason().is_retryable()
    }
}
