//! The one error type of the client: local problems (profile, connection) and the
//! server's answers, the latter with hsmd's stable reason so programs can match on it
//! ([`Reason`], the enum the server names its reasons with).

use hsmd_proto::Reason;
use tonic::Code;
use tonic_types::StatusExt;

use crate::profile::ProfileError;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The profile could not be found, read or used.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The TLS settings were refused or the server could not be reached.
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        /// The endpoint from the profile.
        endpoint: String,
        /// The transport error with its causes.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{} {reason}: {message}", code_name(*code))]
    Status {
        /// gRPC status code.
        code: Code,
        /// hsmd's stable reason from google.rpc.ErrorInfo as sent (e.g. `KEY_NOT_FOUND`);
        /// empty when the status carried none (e.g. transport failures reported by
        /// tonic). Kept as text so a reason this version does not know is still shown;
        /// [`ClientError::reason`] is the typed form.
        reason: String,
        /// Human-readable message.
        message: String,
    },
    /// The server's answer lacked a field hsmd always sets.
    #[error("malformed response from server: {0} missing")]
    MissingField(&'static str),
}

impl ClientError {
    /// True for errors worth retrying after a delay: the same rule the typed calls'
    /// retries follow ([`crate::retry::is_retryable`]): RATE_LIMITED, TOKEN_UNAVAILABLE,
    /// AUDIT_UNAVAILABLE, any other UNAVAILABLE or RESOURCE_EXHAUSTED, and a connection
    /// that broke before any answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status {
                code,
                reason,
                message,
            } => crate::retry::is_retryable(*code, reason, message),
            _ => false,
        }
    }

    /// The gRPC status code, for server errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// hsmd's stable reason, for server errors that carry one this version knows
    /// (`None` for local errors, statuses without ErrorInfo, and unknown reasons: see
    /// [`ClientError::reason_str`]).
    pub fn reason(&self) -> Option<Reason> {
        self.reason_str().and_then(Reason::parse)
    }

    /// The reason exactly as the server sent it, known to this version or not.
    pub fn reason_str(&self) -> Option<&str> {
        match self {
            ClientError::Status { reason, .. } if !reason.is_empty() => Some(reason),
            _ => None,
        }
    }

    /// Builds a connect error from a transport error, keeping its whole cause chain
    /// (tonic's own message is only "transport error").
    pub(crate) fn connect(endpoint: &str, err: &dyn std::error::Error) -> Self {
        ClientError::Connect {
            endpoint: endpoint.to_string(),
            detail: error_chain(err),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let reason = status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone())
            .unwrap_or_default();
        ClientError::Status {
            code: status.code(),
            reason,
            message: status.message().to_string(),
        }
    }
}

/// `err: cause: cause...`, skipping causes whose text repeats the previous one.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if text != last {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cur = e.source();
    }
    out
}

/// The canonical upper-case name of a gRPC status code, e.g. `NOT_FOUND` (the one table,
/// shared with the server's audit records).
pub use hsmd_proto::reason::code_name;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn reason_comes_from_error_info() {
        let details = ErrorDetails::with_error_info(
            "KEY_NOT_FOUND",
            "hsmd",
            std::collections::HashMap::new(),
        );
        let status = tonic::Status::with_error_details(Code::NotFound, "no key x", details);
        let err = ClientError::from(status);
        assert_eq!(err.code(), Some(Code::NotFound));
        assert_eq!(err.reason(), Some(Reason::KeyNotFound));
        assert_eq!(err.reason_str(), Some("KEY_NOT_FOUND"));
        assert_eq!(err.to_string(), "NOT_FOUND KEY_NOT_FOUND: no key x");
        assert!(!err.is_retryable());
    }

    #[test]
    fn retryable_codes() {
        for (code, retry) in [
            (Code::Unavailable, true),
            (Code::ResourceExhausted, true),
            (Code::FailedPrecondition, false),
            (Code::Internal, false),
        ] {
            let err = ClientError::from(tonic::Status::new(code, "x"));
            assert_eq!(err.is_retryable(), retry, "{code:?}");
            assert_eq!(err.reason(), None);
        }
    }

    use std::collections::HashMap;

    fn with_reason(code: Code, reason: &str) -> ClientError {
        let details =
            ErrorDetails::with_error_info(reason, "hsmd", HashMap::<String, String>::new());
        ClientError::from(tonic::Status::with_error_details(code, "x", details))
    }

    #[test]
    fn retryable_agrees_with_the_retry_loop() {
        for (code, reason) in [
            (Code::ResourceExhausted, "RATE_LIMITED"),
            (Code::Unavailable, "TOKEN_UNAVAILABLE"),
            (Code::Unavailable, "AUDIT_UNAVAILABLE"),
            (Code::FailedPrecondition, "KEY_DISABLED"),
            (Code::InvalidArgument, "IDEMPOTENCY_MISMATCH"),
        ] {
            let err = with_reason(code, reason);
            let status = tonic::Status::with_error_details(
                code,
                "x",
                ErrorDetails::with_error_info(reason, "hsmd", HashMap::<String, String>::new()),
            );
            assert_eq!(
                err.is_retryable(),
                crate::retry::retryable_status(&status),
                "{reason}"
            );
            assert_eq!(err.is_retryable(), err.reason().unwrap().is_retryable());
        }
        // A call whose connection broke: retried by the loop, and retryable here too.
        let broken = tonic::Status::unknown("transport error");
        assert!(crate::retry::retryable_status(&broken));
        assert!(ClientError::from(broken).is_retryable());
    }

    #[test]
    fn unknown_reasons_keep_their_text() {
        let err = with_reason(Code::FailedPrecondition, "SOME_NEWER_REASON");
        assert_eq!(err.reason(), None);
        assert_eq!(err.reason_str(), Some("SOME_NEWER_REASON"));
        assert_eq!(err.to_string(), "FAILED_PRECONDITION SOME_NEWER_REASON: x");
    }
}
