//! `libfaultp11.so`: a PKCS#11 module that forwards every call to a real one (SoftHSM2 by
//! default, or `FAULTP11_MODULE`) and injects token faults while a trigger file exists.
//!
//! The trigger is `faultp11.trigger` in the folder of `SOFTHSM2_CONF` (hsmd sets that
//! from its config, so each test's daemon has its own). Its first word chooses the fault:
//! - `SESSION_HANDLE_INVALID`: every session open when the fault is first seen answers
//!   CKR_SESSION_HANDLE_INVALID from then on (as after a token reset); sessions opened
//!   later work.
//! - `DEVICE_REMOVED`: every call on a session, and C_OpenSession, answers
//!   CKR_DEVICE_REMOVED until the file is removed (the token unplugged, then back).
//!
//! Only the calls hsmd makes per request are wrapped (open/close session, sign, decrypt,
//! encrypt, random, object search, key pair generation); the rest go straight through.

#![allow(non_snake_case)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Real {
    list: CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
static WRAPPED: OnceLock<CK_FUNCTION_LIST> = OnceLock::new();

#[derive(Default)]
struct Sessions {
    open: HashSet<CK_SESSION_HANDLE>,
    dead: HashSet<CK_SESSION_HANDLE>,
    /// The session fault was seen and applied to the sessions open then.
    applied: bool,
}

static SESSIONS: OnceLock<Mutex<Sessions>> = OnceLock::new();

fn sessions() -> std::sync::MutexGuard<'static, Sessions> {
    SESSIONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    REAL.get_or_init(load).as_ref().ok().map(|r| &r.list)
}

fn load() -> Result<Real, String> {
    let path = std::env::var("FAULTP11_MODULE").unwrap_or_else(|_| DEFAULT_MODULE.into());
    // SAFETY: loading a PKCS#11 module, whose initializers are meant to run in any
    // process that loads it.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| format!("{path}: {e}"))?;
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: a valid out pointer; the module owns the list it points it to.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("{path}: C_GetFunctionList returned {rv}"));
    }
    // SAFETY: the module returned a valid list that lives as long as the library.
    let list = unsafe { *list };
    Ok(Real { list, _lib: lib })
}

enum Fault {
    SessionsLost,
    DeviceRemoved,
}

fn trigger() -> Option<PathBuf> {
    let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF")?);
    Some(conf.parent()?.join("faultp11.trigger"))
}

fn fault_now() -> Option<Fault> {
    let text = std::fs::read_to_string(trigger()?).ok()?;
    match text.split_whitespace().next()? {
        "SESSION_HANDLE_INVALID" => Some(Fault::SessionsLost),
        "DEVICE_REMOVED" => Some(Fault::DeviceRemoved),
        _ => None,
    }
}

/// The error to answer for a call on session `h`, if a fault is on.
fn fault_for(h: CK_SESSION_HANDLE) -> Option<CK_RV> {
    let fault = fault_now();
    let mut s = sessions();
    match fault {
        None => {
            s.applied = false;
            None
        }
        Some(Fault::DeviceRemoved) => Some(CKR_DEVICE_REMOVED),
        Some(Fault::SessionsLost) => {
            if !s.applied {
                let open: Vec<_> = s.open.drain().collect();
                s.dead.extend(open);
                s.applied = true;
            }
            s.dead.contains(&h).then_some(CKR_SESSION_HANDLE_INVALID)
        }
    }
}

macro_rules! forward {
    ($name:ident($($arg:expr),*)) => {
        match real().and_then(|l| l.$name) {
            // SAFETY: the real module's own function, called with the caller's arguments.
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_GENERAL_ERROR,
        }
    };
}

unsafe extern "C" fn OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut std::os::raw::c_void,
    notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if matches!(fault_now(), Some(Fault::DeviceRemoved)) {
        return CKR_DEVICE_REMOVED;
    }
    let rv = forward!(C_OpenSession(slot, flags, app, notify, out));
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the real module wrote a handle there.
        let h = unsafe { *out };
        let mut s = sessions();
        s.dead.remove(&h);
        s.open.insert(h);
    }
    rv
}

unsafe extern "C" fn CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    {
        let mut s = sessions();
        s.open.remove(&h);
        s.dead.remove(&h);
    }
    forward!(C_CloseSession(h))
}

macro_rules! faulty {
    ($wrapper:ident, $name:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $wrapper(h: CK_SESSION_HANDLE, $($arg: $ty),*) -> CK_RV {
            if let Some(rv) = fault_for(h) {
                return rv;
            }
            forward!($name(h, $($arg),*))
        }
    };
}

faulty!(SignInit, C_SignInit, (m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE));
faulty!(Sign, C_Sign, (d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: *mut CK_ULONG));
faulty!(DecryptInit, C_DecryptInit, (m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE));
faulty!(Decrypt, C_Decrypt, (d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG));
faulty!(EncryptInit, C_EncryptInit, (m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE));
faulty!(Encrypt, C_Encrypt, (d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG));
faulty!(GenerateRandom, C_GenerateRandom, (b: *mut CK_BYTE, l: CK_ULONG));
faulty!(FindObjectsInit, C_FindObjectsInit, (t: *mut CK_ATTRIBUTE, n: CK_ULONG));
faulty!(
    GenerateKeyPair,
    C_GenerateKeyPair,
    (
        m: *mut CK_MECHANISM,
        pt: *mut CK_ATTRIBUTE,
        pn: CK_ULONG,
        st: *mut CK_ATTRIBUTE,
        sn: CK_ULONG,
        pk: *mut CK_OBJECT_HANDLE,
        sk: *mut CK_OBJECT_HANDLE
    )
);

/// The module's entry point: the real module's list with the wrapped calls in place.
///
/// # Safety
/// `out` must be valid for a write, as PKCS#11 requires of the caller.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(out: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if out.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Some(real) = real() else {
        return CKR_GENERAL_ERROR;
    };
    let wrapped = WRAPPED.get_or_init(|| {
        let mut l = *real;
        l.C_GetFunctionList = Some(C_GetFunctionList);
        l.C_OpenSession = Some(OpenSession);
        l.C_CloseSession = Some(CloseSession);
        l.C_SignInit = Some(SignInit);
        l.C_Sign = Some(Sign);
        l.C_DecryptInit = Some(DecryptInit);
        l.C_Decrypt = Some(Decrypt);
        l.C_EncryptInit = Some(EncryptInit);
        l.C_Encrypt = Some(Encrypt);
        l.C_GenerateRandom = Some(GenerateRandom);
        l.C_FindObjectsInit = Some(FindObjectsInit);
        l.C_GenerateKeyPair = Some(GenerateKeyPair);
        l
    });
    // SAFETY: checked non-null above; the list is a static that lives for ever, and
    // PKCS#11 callers never write through it.
    unsafe { *out = wrapped as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}
