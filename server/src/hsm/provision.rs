//! Token initialisation for `hsmd dev`: a fresh token in the first free slot, with its
//! SO and user PINs. Here so that `hsm` stays the only module that names cryptoki.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use secrecy::SecretString;

use super::HsmError;
use super::error::classify;

/// Initializes a fresh token labelled `label` in the module's first free slot, with SO
/// PIN `so_pin` and user PIN `pin`. Loads and finalizes the module itself: call it before
/// any [`Pkcs11Backend`](super::Pkcs11Backend) of this process opens the module.
pub(crate) fn init_token(
    module: &Path,
    label: &str,
    so_pin: &SecretString,
    pin: &SecretString,
) -> Result<(), HsmError> {
    let pkcs11 = Pkcs11::new(module).map_err(|e| {
        HsmError::Unavailable(format!("load PKCS#11 module {}: {e}", module.display()))
    })?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| classify("C_Initialize", e))?;
    let slot = pkcs11
        .get_all_slots()
        .map_err(|e| classify("C_GetSlotList", e))?
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .map(|t| !t.token_initialized())
                .unwrap_or(false)
        })
        .ok_or_else(|| HsmError::Unavailable("the module offers no free slot".into()))?;
    pkcs11
        .init_token(slot, so_pin, label)
        .map_err(|e| classify("C_InitToken", e))?;
    {
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| classify("C_OpenSession", e))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(|e| classify("C_Login (SO)", e))?;
        session
            .init_pin(pin)
            .map_err(|e| classify("C_InitPIN", e))?;
    }
    pkcs11.finalize().map_err(|e| classify("C_Finalize", e))?;
    Ok(())
}
