//! Checking gRPC answers: status code, the stable `ErrorInfo` reason, and the
//! `x-request-id` that ties an answer to its audit record.

use std::fmt::Debug;

use tonic::{Code, Response, Status, metadata::MetadataMap};
use tonic_types::StatusExt;

/// The `google.rpc.ErrorInfo` reason of a status, if it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// The `x-request-id` of an answer; panics if it is missing.
pub fn request_id(metadata: &MetadataMap, what: &str) -> String {
    metadata
        .get("x-request-id")
        .unwrap_or_else(|| panic!("{what}: answer has no x-request-id metadata: {metadata:?}"))
        .to_str()
        .expect("x-request-id is ASCII")
        .to_owned()
}

/// Describes a status for assertion messages.
pub fn describe(status: &Status) -> String {
    format!(
        "code={:?} reason={:?} message={:?}",
        status.code(),
        reason_of(status),
        status.message()
    )
}

/// Asserts that `result` failed with `code` and the ErrorInfo `reason`; returns the
/// request id of the refusal.
pub fn expect_error<T: Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    reason: &str,
    what: &str,
) -> String {
    let status = match result {
        Ok(resp) => panic!(
            "{what}: expected {code:?}/{reason}, but the call succeeded: {:?}",
            resp.get_ref()
        ),
        Err(status) => status,
    };
    assert!(
        status.code() == code && reason_of(&status).as_deref() == Some(reason),
        "{what}: expected {code:?}/{reason}, got {}",
        describe(&status)
    );
    assert!(
        !status.message().is_empty(),
        "{what}: the error should say what was wrong, got an empty message"
    );
    request_id(status.metadata(), what)
}

/// Unwraps a successful answer, panicking with the status otherwise; returns the body
/// and its request id.
pub fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> (T, String) {
    match result {
        Ok(resp) => {
            let id = request_id(resp.metadata(), what);
            (resp.into_inner(), id)
        }
        Err(status) => panic!("{what}: expected success, got {}", describe(&status)),
    }
}

/// The gRPC code name as the audit log writes it ("INVALID_ARGUMENT").
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

/// The audit outcome audit.proto assigns to a status code.
pub fn outcome_for(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::PermissionDenied | Code::Unauthenticated => "denied",
        Code::ResourceExhausted => "throttled",
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition => {
            "invalid"
        }
        _ => "failed",
    }
}

/// Method path of a KeyService RPC, as the audit log records it.
pub fn key_method(name: &str) -> String {
    format!("/hsmd.v1.KeyService/{name}")
}

impl crate::Instance {
    /// Asserts that `result` failed with `code`/`reason` and that exactly one audit record
    /// of that request says so (method, outcome, status, reason). Returns the record.
    pub fn assert_refused<T: Debug>(
        &self,
        result: Result<Response<T>, Status>,
        method: &str,
        code: Code,
        reason: &str,
    ) -> crate::audit::AuditLine {
        let what = format!("{method} expecting {reason}");
        let rid = expect_error(result, code, reason, &what);
        self.assert_audited(&rid, method, outcome_for(code), code_name(code), reason)
    }
}
