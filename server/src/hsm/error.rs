//! Errors of the PKCS#11 backend, and the one function that classifies every
//! `cryptoki::error::Error` into them, keeping the name of the call that failed.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// What went wrong in the token, in terms the layers above can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HsmError {
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
    /// Any other PKCS#11 return value. `rv` stays typed so callers match on it
    /// (`RvError::PinIncorrect`), never on its text; `function` names the call for logs.
    #[error("PKCS#11 {function}: {rv}")]
    Pkcs11 { function: String, rv: RvError },
    /// A cryptoki failure that is no PKCS#11 return value (a missing symbol, a value
    /// cryptoki could not convert).
    #[error("PKCS#11 {function}: {detail}")]
    Cryptoki {
        function: &'static str,
        detail: String,
    },
    /// Start-up problems: module, token, PIN. The message names what failed.
    #[error("{0}")]
    Setup(String),
}

/// Classifies a cryptoki error, naming the PKCS#11 call in `what` for the logs.
pub(crate) fn classify(what: &'static str, err: CkError) -> HsmError {
    match err {
        CkError::Pkcs11(rv, function) => classify_rv(what, rv, function),
        CkError::LibraryLoading(e) => HsmError::Unavailable(format!("{what}: module: {e}")),
        other => HsmError::Cryptoki {
            function: what,
            detail: other.to_string(),
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
            rv,
        },
    }
}

/// True when the error means the session (or the login) is gone and a fresh session
/// would fix it. A session left with an operation active (a token that did not end a
/// failed C_Decrypt) is replaced too, so it cannot fail every later call.
pub(crate) fn session_lost(err: &CkError) -> bool {
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

/// True for return values that may mean the token (or the module's link to it) is gone
/// rather than that the request was bad: worth a health check. tpm2-pkcs11 answers
/// CKR_GENERAL_ERROR to everything once its TPM or resource manager restarted.
pub(crate) fn token_suspect(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::GeneralError
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized
                | RvError::FunctionFailed,
            _
        )
    )
}

/// True when a failed C_Decrypt was refused because of the ciphertext (its padding,
/// tag, length or range), as opposed to the key, the session or the token.
pub(crate) fn is_decrypt_failure(err: &CkError) -> bool {
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

/// The start-up line of a failed C_Login: a wrong or locked PIN is said in words, by
/// the PKCS#11 return value.
pub(super) fn login_hint(e: HsmError) -> String {
    let text = e.to_string();
    match e {
        HsmError::Pkcs11 {
            rv: RvError::PinIncorrect,
            ..
        } => format!("wrong PIN ({text})"),
        HsmError::Pkcs11 {
            rv: RvError::PinLocked,
            ..
        } => format!("PIN locked ({text})"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login_failure(rv: RvError) -> HsmError {
        classify("C_Login", CkError::Pkcs11(rv, Function::Login))
    }

    #[test]
    fn login_hint_reads_the_return_value() {
        let wrong = login_hint(login_failure(RvError::PinIncorrect));
        assert!(
            wrong.starts_with("wrong PIN (PKCS#11 C_Login (Function::Login): "),
            "{wrong}"
        );
        let locked = login_hint(login_failure(RvError::PinLocked));
        assert!(
            locked.starts_with("PIN locked (PKCS#11 C_Login"),
            "{locked}"
        );
        let other = login_hint(login_failure(RvError::GeneralError));
        assert!(
            other.starts_with("PKCS#11 C_Login (Function::Login): "),
            "{other}"
        );
        // Unavailable tokens keep their own text, whatever words it holds.
        let gone = login_hint(login_failure(RvError::TokenNotPresent));
        assert!(gone.starts_with("token unavailable: C_Login"), "{gone}");
    }

    #[test]
    fn other_return_values_stay_typed() {
        assert!(matches!(
            classify(
                "C_Sign",
                CkError::Pkcs11(RvError::GeneralError, Function::Sign)
            ),
            HsmError::Pkcs11 {
                rv: RvError::GeneralError,
                ..
            }
        ));
        assert!(matches!(
            classify("C_Sign", CkError::NullFunctionPointer),
            HsmError::Cryptoki {
                function: "C_Sign",
                ..
            }
        ));
    }
}
