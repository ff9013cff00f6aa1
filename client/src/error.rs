//! The one error type of the client: local problems (profile, connection) and the
//! server's answers, the latter with hsmd's stable reason so programs can match on it.

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
        /// hsmd's stable reason from google.rpc.ErrorInfo (e.g. `KEY_NOT_FOUND`); empty
        /// when the status carried none (e.g. transport failures reported by tonic).
        reason: String,
        /// Human-readable message.
        message: String,
    },
    /// The server's answer lacked a field hsmd always sets.
    #[error("malformed response from server: {0} missing")]
    MissingField(&'static str),
}

impl ClientError {
    /// True for errors worth retrying after a delay: UNAVAILABLE (token or audit log
    /// briefly unavailable, connection lost) and RESOURCE_EXHAUSTED (rate limit).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Status {
                code: Code::Unavailable | Code::ResourceExhausted,
                ..
            }
        )
    }

    /// The gRPC status code, for server errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// hsmd's stable reason, for server errors that carry one.
    pub fn reason(&self) -> Option<&str> {
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

/// The canonical upper-case name of a gRPC status code, e.g. `NOT_FOUND`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

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
        assert_eq!(err.reason(), Some("KEY_NOT_FOUND"));
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
}
