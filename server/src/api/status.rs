//! The one place that builds a `tonic::Status`: every error of the layers below gets
//! its gRPC code and a stable reason (google.rpc.ErrorInfo, domain "hsmd"). Internal
//! detail is logged here and never sent: the client sees what it can act on.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::audit::Outcome;
use crate::csr::CertError;
use crate::domain::reason::Reason;
use crate::keys::KeyError;
use crate::signing::SigningError;

/// ErrorInfo domain of every hsmd error.
pub(crate) const DOMAIN: &str = "hsmd";
/// Metadata key of a throttled call's retry delay, in milliseconds (also in the
/// status details as google.rpc.RetryInfo).
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Errors a handler can end with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no verified client certificate identity")]
    Unauthenticated,
    /// The policy does not allow it. Names the action and the key, never the rules.
    #[error("principal '{principal}' may not {action} {}", key_phrase(key))]
    AccessDenied {
        principal: String,
        action: &'static str,
        key: Option<String>,
    },
    #[error("rate limit for {class} calls reached; retry in {} ms", retry_after.as_millis().max(1))]
    RateLimited {
        class: &'static str,
        retry_after: std::time::Duration,
    },
    #[error(
        "principal '{principal}' has {max} connections open, the most allowed (tls.max_connections_per_principal): use one of them"
    )]
    ConnectionLimit { principal: String, max: usize },
    #[error("audit log unavailable: the call was not carried out; retry later")]
    AuditUnavailable,
    #[error(transparent)]
    Cert(CertError),
    #[error(transparent)]
    Signing(SigningError),
}

impl From<SigningError> for ApiError {
    fn from(e: SigningError) -> Self {
        match e {
            SigningError::Key(k) => ApiError::Key(k),
            other => ApiError::Signing(other),
        }
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::Key(k) => ApiError::Key(k),
            other => ApiError::Cert(other),
        }
    }
}

fn key_phrase(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key {k}"),
        None => "(no rule grants it this action)".into(),
    }
}

impl ApiError {
    /// gRPC code of this error: its reason's (`Reason::code`), so the code follows
    /// from the error's type and never disagrees with the reason.
    pub(crate) fn code(&self) -> Code {
        self.reason().code()
    }

    /// Stable reason (google.rpc.ErrorInfo.reason, and the audit record's `reason`).
    pub(crate) fn reason(&self) -> Reason {
        match self {
            ApiError::Unauthenticated => Reason::NoClientIdentity,
            ApiError::AccessDenied { .. } => Reason::AccessDenied,
            ApiError::RateLimited { .. } => Reason::RateLimited,
            ApiError::ConnectionLimit { .. } => Reason::ConnectionLimit,
            ApiError::AuditUnavailable => Reason::AuditUnavailable,
            ApiError::Cert(c) => c.reason(),
            ApiError::Signing(s) => s.reason(),
            ApiError::Key(k) => k.reason(),
        }
    }

    /// Audit outcome of a call that ended with this error.
    pub(crate) fn outcome(&self) -> Outcome {
        match self.code() {
            Code::Unauthenticated | Code::PermissionDenied => Outcome::Denied,
            Code::ResourceExhausted => Outcome::Throttled,
            Code::Unavailable | Code::Internal | Code::Unknown => Outcome::Failed,
            _ => Outcome::Invalid,
        }
    }

    /// The status sent to the client.
    pub(crate) fn to_status(&self) -> Status {
        let message = match self {
            ApiError::Key(KeyError::Unavailable(detail)) => {
                tracing::warn!(%detail, "token unavailable");
                "token unavailable; retry later".to_string()
            }
            ApiError::Key(KeyError::StoreUnavailable(detail)) => {
                tracing::warn!(%detail, "metadata store unavailable");
                "metadata store unavailable; retry later".to_string()
            }
            ApiError::Key(KeyError::Internal(detail)) => {
                tracing::error!(%detail, "internal error");
                "internal error (see the server log)".to_string()
            }
            other => other.to_string(),
        };
        let mut details =
            ErrorDetails::with_error_info(self.reason(), DOMAIN, HashMap::<String, String>::new());
        if let ApiError::RateLimited { retry_after, .. } = self {
            details.set_retry_info(Some(*retry_after));
        }
        let mut status = Status::with_error_details(self.code(), message, details);
        if let ApiError::RateLimited { retry_after, .. } = self
            && let Ok(v) = retry_after.as_millis().max(1).to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        status
    }
}

/// Name of a gRPC code as written in audit records ("OK", "INVALID_ARGUMENT"...).
pub(crate) use hsmd_proto::reason::code_name;

#[cfg(test)]
mod tests;
