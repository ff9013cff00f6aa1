//! Errors of the PKCS#11 backend, and the one function that classifies every
//! `cryptoki::error::Error` into them, keeping the name of the call that failed.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// What went wrong in the token, in terms the layers above can act on.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The key's objects are not in the token.
    #[error("key object not found in token")]
    ObjectMissing,
    /// The token does not offer what was asked.
    #[error("not supported by this token: {0}")]
    Unsupported(String),
    /// The token, its module or every pooled session is out of reach right now.
    #[error("token unavailable: {0}")]
    Unavailable(String),
    /// The data handed to the token is not valid for the operation (length, range).
    #[error("input rejected by the token: {0}")]
    BadInput(String),
    /// A decryption the token refused because of the ciphertext (bad padding, bad tag,
    /// wrong length, out of range). One variant for all of them: no padding oracle.
    #[error("decryption failed")]
    DecryptFailed,
    /// Any other failure of a PKCS#11 call.
    #[error("PKCS#11 {function}: {rv}")]
    Pkcs11 { function: String, rv: String },
    /// Start-up problems: module, token, PIN. The message names what failed.
    #[error("{0}")]
    Setup(String),
}

/// Classifies a cryptoki error, naming the PKCS#11 call in `what` for the logs.
pub fn classify(what: &'static str, err: CkError) -> HsmError {
    match err {
        CkError::Pkcs11(rv, function) => classify_rv(what, rv, function),
        CkError::LibraryLoading(e) => HsmError::Unavailable(format!("{what}: module: {e}")),
        other => HsmError::Pkcs11 {
            function: what.to_string(),
            rv: other.to_string(),
        },
    }
}

fn classify_rv(what: &'static str, rv: RvError, function: Function) -> HsmError {
    use RvError::*;
    match rv {
        ObjectHandleInvalid | KeyHandleInvalid => HsmError::ObjectMissing,
        DeviceRemoved
        | DeviceError
        | TokenNotPresent
        | TokenNotRecognized
        | SessionClosed
        | SessionHandleInvalid
        | UserNotLoggedIn
        | CryptokiNotInitialized
        | DeviceMemory
        | SessionCount => HsmError::Unavailable(format!("{what} ({function}): {rv}")),
        MechanismInvalid
        | MechanismParamInvalid
        | FunctionNotSupported
        | KeyTypeInconsistent
        | KeyFunctionNotPermitted
        | KeySizeRange
        | DomainParamsInvalid
        | CurveNotSupported => HsmError::Unsupported(format!("{what} ({function}): {rv}")),
        DataLenRange
        | DataInvalid
        | EncryptedDataInvalid
        | EncryptedDataLenRange
        | ArgumentsBad => HsmError::BadInput(format!("{what} ({function}): {rv}")),
        _ => HsmError::Pkcs11 {
            function: format!("{what} ({function})"),
            rv: rv.to_string(),
        },
    }
}

/// True when the error means the session (or the login) is gone and a fresh session
/// would fix it. A session left with an operation active (a token that did not end a
/// failed C_Decrypt) is replaced too, so it cannot fail every later call.
pub fn session_lost(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::OperationActive,
            _
        )
    )
}

/// True when a failed C_Decrypt was refused because of the ciphertext (its padding,
/// tag, length or range), as opposed to the key, the session or the token.
pub fn is_decrypt_failure(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}
