//! Errors of `hsmctl` and how they are printed: always
//! `error: <CODE> <REASON>: <message>` on stderr, exit status 2.
//!
//! Server errors keep the server's status code and stable reason. Local failures get a
//! code in the same vocabulary and a reason of their own, so scripts parse one shape.

use hsm_client::{ClientError, ProfileError, code_name};

/// An `hsmctl` failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the client library (server status, profile, connection).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local problem (files, arguments).
    #[error("{message}")]
    Local {
        /// Status code name in gRPC's vocabulary, e.g. `INVALID_ARGUMENT`.
        code: &'static str,
        /// Stable reason, e.g. `LOCAL_IO`.
        reason: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl From<ProfileError> for CliError {
    fn from(e: ProfileError) -> Self {
        CliError::Client(ClientError::Profile(e))
    }
}

impl CliError {
    /// A file could not be read or written.
    pub fn io(what: &str, path: &str, err: std::io::Error) -> Self {
        CliError::Local {
            code: "INVALID_ARGUMENT",
            reason: "LOCAL_IO",
            message: format!("{what} {path}: {err}"),
        }
    }

    /// The arguments do not fit together.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Local {
            code: "INVALID_ARGUMENT",
            reason: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    /// The one line printed on stderr (without the trailing newline).
    pub fn line(&self) -> String {
        let (code, reason, message) = self.parts();
        format!("error: {code} {reason}: {message}")
    }

    fn parts(&self) -> (&'static str, String, String) {
        match self {
            CliError::Local {
                code,
                reason,
                message,
            } => (code, reason.to_string(), message.clone()),
            CliError::Client(e) => client_parts(e),
        }
    }
}

/// Code, reason and message of a library error. A status without an ErrorInfo reason
/// (e.g. a transport failure reported by tonic) uses its code name as the reason, as
/// hsmd itself does for generic errors.
fn client_parts(e: &ClientError) -> (&'static str, String, String) {
    match e {
        ClientError::Status {
            code,
            reason,
            message,
        } => {
            let name = code_name(*code);
            let reason = if reason.is_empty() { name } else { reason };
            (name, reason.to_string(), message.clone())
        }
        ClientError::Profile(p) => ("FAILED_PRECONDITION", "PROFILE".into(), p.to_string()),
        ClientError::Connect { .. } => ("UNAVAILABLE", "CONNECT_FAILED".into(), e.to_string()),
        ClientError::MissingField(_) => ("INTERNAL", "MALFORMED_RESPONSE".into(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn status_lines() {
        let e = CliError::from(ClientError::Status {
            code: Code::FailedPrecondition,
            reason: "KEY_DISABLED".into(),
            message: "key k is disabled".into(),
        });
        assert_eq!(
            e.line(),
            "error: FAILED_PRECONDITION KEY_DISABLED: key k is disabled"
        );
        let e = CliError::from(ClientError::Status {
            code: Code::Unavailable,
            reason: String::new(),
            message: "connection reset".into(),
        });
        assert_eq!(e.line(), "error: UNAVAILABLE UNAVAILABLE: connection reset");
    }

    #[test]
    fn local_lines() {
        let e = CliError::usage("--in and --signature cannot both be -");
        assert_eq!(
            e.line(),
            "error: INVALID_ARGUMENT INVALID_ARGUMENT: --in and --signature cannot both be -"
        );
        let e = CliError::from(ProfileError::NoDefaultPath);
        assert!(
            e.line()
                .starts_with("error: FAILED_PRECONDITION PROFILE: no profile path")
        );
    }
}
