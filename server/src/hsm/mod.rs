//! PKCS#11 backend: the only module that names cryptoki.
//!
//! Every method blocks on FFI: call it from the blocking pool only. One `Pkcs11Backend`
//! per process: the module is initialized once (with OS locking), the user logs in once,
//! a bounded pool of sessions stays open for the life of the process, and object handles
//! are cached per key so that no call pays for C_FindObjects on the hot path.

pub(crate) mod audit_key;
pub(crate) mod certs;
pub(crate) mod crypt;
pub(crate) mod error;
pub(crate) mod import;
pub(crate) mod mechanisms;
pub(crate) mod objects;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod provision;
pub(crate) mod refusals;
pub(crate) mod token_probe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectClass;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use uuid::Uuid;

pub(crate) use certs::CertificateObject;
pub(crate) use error::HsmError;
pub(crate) use mechanisms::SignMechanism;
pub(crate) use objects::KeyObjects;
pub(crate) use probe::{Capabilities, OaepPath};

use crate::domain::spec::{KeySpec, KeyUsage};
use crate::encoding::PublicKeyMaterial;
use crate::metrics::Metrics;
use error::{classify, login_hint, session_lost, token_suspect};

/// Where the token is and how to log in to it.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// PKCS#11 module (shared library) path.
    pub module: PathBuf,
    /// Token label (chosen by label, never by slot number).
    pub token_label: String,
    /// User PIN.
    pub pin: SecretString,
    /// Number of sessions in the pool.
    pub sessions: usize,
}

/// Identity of the token and its module, for `hsmctl token info`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenDescription {
    pub(crate) label: String,
    pub(crate) manufacturer: String,
    pub(crate) model: String,
    pub(crate) serial_number: String,
    pub(crate) module_path: String,
    pub(crate) library_description: String,
    pub(crate) library_version: String,
}

/// The token, a pool of logged-in sessions and a cache of key object handles.
pub(crate) struct Pkcs11Backend {
    pool: pool::SessionPool,
    /// Time and failures of each PKCS#11 operation.
    metrics: Arc<Metrics>,
    handles: RwLock<HashMap<Uuid, KeyObjects>>,
    /// Guards the token's object files: a call that creates or destroys token objects
    /// holds it exclusively, one that reads them (find, copy) shares it. SoftHSM2's file
    /// object store fails concurrent token-object writes, and reads racing a write, with
    /// CKR_GENERAL_ERROR (softhsm/SoftHSMv2#573; seen here at 8 concurrent CreateKey
    /// calls). Signing and verifying use session-object copies and never take it.
    token_objects: RwLock<()>,
    /// Shared by every call that uses a session, held exclusively while the module is
    /// re-initialized (C_Finalize must not race other calls).
    module: RwLock<()>,
    capabilities: Capabilities,
    description: TokenDescription,
    audit_key: audit_key::AuditKeyCache,
}

/// How many more times start-up looks for the token before it gives up.
const TOKEN_LOOKS: u32 = 10;

impl Pkcs11Backend {
    /// Loads the module, finds the token by label, logs in and opens the pool. Errors
    /// name the module, the token label and what failed.
    pub(crate) fn open(cfg: &HsmConfig) -> Result<Self, HsmError> {
        let setup = |what: &str, detail: String| {
            HsmError::Setup(format!(
                "PKCS#11 module {}, token '{}': {what}: {detail}",
                cfg.module.display(),
                cfg.token_label
            ))
        };
        if !Path::new(&cfg.module).exists() {
            return Err(setup(
                "module file not found",
                "install it or fix hsm.module".into(),
            ));
        }
        let mut looks = 0;
        let (pkcs11, slot) = loop {
            let pkcs11 =
                Pkcs11::new(&cfg.module).map_err(|e| setup("cannot load module", e.to_string()))?;
            pkcs11
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .map_err(|e| setup("C_Initialize failed", e.to_string()))?;
            match find_slot(&pkcs11, &cfg.token_label) {
                Ok(slot) => break (pkcs11, slot),
                // Another process on the same token (a replica starting beside this
                // one) may be writing its files while this one reads them: SoftHSM2
                // then lists no token. Look again, for two seconds at most.
                Err(_) if looks < TOKEN_LOOKS => {
                    looks += 1;
                    let _ = pkcs11.finalize();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(d) => return Err(setup("token", d)),
            }
        };
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| setup("C_GetTokenInfo", e.to_string()))?;
        let lib = pkcs11
            .get_library_info()
            .map_err(|e| setup("C_GetInfo", e.to_string()))?;
        let description = TokenDescription {
            label: info.label().trim().to_string(),
            manufacturer: info.manufacturer_id().trim().to_string(),
            model: info.model().trim().to_string(),
            serial_number: info.serial_number().trim().to_string(),
            module_path: cfg.module.display().to_string(),
            library_description: lib.library_description().trim().to_string(),
            library_version: lib.library_version().to_string(),
        };
        let mechs = pkcs11
            .get_mechanism_list(slot)
            .map_err(|e| setup("C_GetMechanismList", e.to_string()))?;
        // Key size range in bits (tpm2-pkcs11: 1024..3072, so no RSA_4096).
        let rsa_sizes = mechs
            .contains(&MechanismType::RSA_PKCS_KEY_PAIR_GEN)
            .then(|| pkcs11.get_mechanism_info(slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN))
            .and_then(Result::ok)
            .map(|i| (i.min_key_size(), i.max_key_size()));
        let oaep_unwrap = pkcs11
            .get_mechanism_info(slot, MechanismType::RSA_PKCS_OAEP)
            .is_ok_and(|i| i.unwrap());
        let pool = pool::SessionPool::open(pkcs11, slot, cfg.pin.clone(), cfg.sessions)
            .map_err(|e| setup("login", login_hint(e)))?;
        // Tried, not read from the mechanism list: SoftHSM2 lists CKM_RSA_PKCS_OAEP but
        // refuses it with SHA-256.
        let session = pool.get()?;
        let probe = crypt::probe_encryption(session.session(), &mechs);
        let mut capabilities = Capabilities::from_mechanisms(&mechs).with_encryption(probe);
        if let Some((min, max)) = rsa_sizes {
            capabilities = capabilities.with_rsa_key_sizes(min, max);
        }
        capabilities.oaep_unwrap = oaep_unwrap;
        let objects = token_probe::probe_objects(session.session(), &mechs);
        capabilities = capabilities.with_objects(probe::ObjectSupport {
            session_keys: objects.session_keys,
            copy: objects.copy,
        });
        capabilities.usage_forced_by_token =
            token_probe::usage_forced_by_token(session.session(), &mechs);
        drop(session);
        Ok(Pkcs11Backend {
            pool,
            metrics: Default::default(),
            handles: RwLock::new(HashMap::new()),
            token_objects: RwLock::new(()),
            module: RwLock::new(()),
            capabilities,
            description,
            audit_key: Default::default(),
        })
    }

    /// Records token operations and the session pool into `metrics` from now on.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.pool.observe(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// What the start-up probe found.
    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The token's identity.
    pub(crate) fn description(&self) -> &TokenDescription {
        &self.description
    }

    /// Number of pooled sessions.
    pub(crate) fn pool_size(&self) -> usize {
        self.pool.size()
    }

    /// Runs `f` on a pooled session; a session the token lost is replaced and the
    /// handle cache flushed (handles die with the login). An error that may mean the
    /// token itself is gone (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR...) is followed by a
    /// health check (C_GenerateRandom); if that fails too the call is UNAVAILABLE and the
    /// module is re-initialized, by this call or the next one, until it works again.
    /// `what` names the operation and, in parentheses, its mechanism
    /// (`C_Decrypt (RSA-OAEP)`), as logs and metrics show it.
    fn with_session<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, HsmError> {
        let (operation, mechanism) = match what.split_once(" (") {
            Some((op, mech)) => (op, mech.trim_end_matches(')')),
            None => (what, "-"),
        };
        self.with_session_as(what, operation, mechanism, f)
    }

    /// `with_session`, with the operation and mechanism named apart for the metrics.
    fn with_session_as<T>(
        &self,
        what: &'static str,
        operation: &str,
        mechanism: &str,
        mut f: impl FnMut(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, HsmError> {
        if self.pool.is_broken() {
            self.recover()?;
        }
        let module = self.module.read().unwrap_or_else(|p| p.into_inner());
        let mut s = self.pool.get()?;
        let mut started = std::time::Instant::now();
        let mut result = f(s.session());
        // A session left with an operation active by an earlier failed call (tpm2-pkcs11
        // does not end a C_Decrypt that failed on the ciphertext) fails this call's
        // C_*Init through no fault of its own: replace the session and try once more.
        if let Err(cryptoki::error::Error::Pkcs11(RvError::OperationActive, _)) = &result {
            tracing::debug!(call = what, "session had an operation active; replacing it");
            s.mark_lost();
            self.flush_handles();
            s = self.pool.get()?;
            started = std::time::Instant::now();
            result = f(s.session());
        }
        self.metrics
            .token_op(operation, mechanism, started.elapsed(), result.is_ok());
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                if session_lost(&e) {
                    s.mark_lost();
                    self.flush_handles();
                } else if token_suspect(&e) && s.session().generate_random_vec(1).is_err() {
                    tracing::warn!(call = what, error = %e, "token failed a health check; re-initializing the PKCS#11 module");
                    self.pool.mark_broken();
                    drop(s);
                    drop(module);
                    self.recover()?;
                    return Err(HsmError::Unavailable(format!(
                        "{what}: the token was lost and is back; retry"
                    )));
                }
                Err(classify(what, e))
            }
        }
    }

    /// Re-initializes the module once no call uses it; UNAVAILABLE while that fails.
    fn recover(&self) -> Result<(), HsmError> {
        let _only = self.module.write().unwrap_or_else(|p| p.into_inner());
        if !self.pool.is_broken() {
            return Ok(());
        }
        self.flush_handles();
        match self.pool.reinitialize() {
            Ok(()) => {
                tracing::info!("PKCS#11 module re-initialized; the token is back");
                Ok(())
            }
            Err(e) => Err(HsmError::Unavailable(format!(
                "token lost; re-initializing the module failed: {e}"
            ))),
        }
    }

    /// Like `with_session`, for calls that create or destroy token objects: one at a
    /// time, and never while a call reads token objects.
    pub(crate) fn with_token_write<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, HsmError> {
        let _writer = self
            .token_objects
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.with_session(what, f)
    }

    /// Like `with_session`, for calls that read token objects (find, copy, attributes):
    /// in parallel with each other, never during a token write.
    pub(crate) fn with_token_read<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, HsmError> {
        let _reader = self.token_objects.read().unwrap_or_else(|p| p.into_inner());
        self.with_session(what, f)
    }

    /// Generates a key in the token with CKA_ID = the id's 16 bytes and CKA_LABEL = its
    /// text. On success the handles are cached.
    pub(crate) fn generate(
        &self,
        id: Uuid,
        spec: KeySpec,
        usage: KeyUsage,
    ) -> Result<(), HsmError> {
        self.generate_labelled(id, &id.to_string(), spec, usage)
    }

    /// Like `generate`, with another CKA_LABEL (a key's later version: "KEY_ID vN").
    pub(crate) fn generate_labelled(
        &self,
        id: Uuid,
        label: &str,
        spec: KeySpec,
        usage: KeyUsage,
    ) -> Result<(), HsmError> {
        let mut template = objects::generation(spec, usage, id.as_bytes(), label)
            .ok_or_else(|| HsmError::Unsupported(format!("{spec} keys on this token")))?;
        if self.capabilities.usage_forced_by_token {
            template.drop_false_usage();
        }
        // Handles are cached on first use (with the session-object copy, see `objects`).
        self.with_token_write("C_GenerateKeyPair", |s| objects::generate(s, &template))
            .map(drop)
    }

    /// Reads the public half of a key pair.
    pub(crate) fn public_key(
        &self,
        id: Uuid,
        spec: KeySpec,
    ) -> Result<PublicKeyMaterial, HsmError> {
        let objs = self.objects(id)?;
        let public = objs.public.ok_or(HsmError::ObjectMissing)?;
        self.with_session("C_GetAttributeValue", |s| {
            objects::public_key(s, spec, public)
        })?
        .ok_or(HsmError::ObjectMissing)
    }

    /// Signs `input` (message or digest, as the mechanism expects) with the key's
    /// private object. ECDSA output is raw r‖s.
    pub(crate) fn sign(
        &self,
        id: Uuid,
        mech: SignMechanism,
        input: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let data = mech.token_input(input);
        self.retry_if_missing(id, |objs| {
            self.with_session_as("C_Sign", "C_Sign", mech.name(), |s| {
                s.sign(&mech.mechanism(), objs.private, &data)
            })
        })
    }

    /// Runs `op` with the key's cached handles; if the token no longer knows them (a
    /// session copy died with its session), reloads them once and retries.
    fn retry_if_missing<T>(
        &self,
        id: Uuid,
        op: impl Fn(KeyObjects) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let result = op(self.objects(id)?);
        if matches!(result, Err(HsmError::ObjectMissing)) {
            self.handles
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return op(self.objects(id)?);
        }
        result
    }

    /// Verifies `signature` with the key's public object. A signature that does not
    /// verify gives `Ok(false)`.
    pub(crate) fn verify(
        &self,
        id: Uuid,
        mech: SignMechanism,
        input: &[u8],
        signature: &[u8],
    ) -> Result<bool, HsmError> {
        let data = mech.token_input(input);
        self.retry_if_missing(id, |objs| {
            let public = objs.public.ok_or(HsmError::ObjectMissing)?;
            self.with_session_as("C_Verify", "C_Verify", mech.name(), |s| {
                match s.verify(&mech.mechanism(), public, &data, signature) {
                    Ok(()) => Ok(true),
                    Err(cryptoki::error::Error::Pkcs11(
                        RvError::SignatureInvalid | RvError::SignatureLenRange,
                        _,
                    )) => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })
    }

    /// Random bytes from the token's RNG.
    pub(crate) fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        let len = u32::try_from(len).map_err(|_| HsmError::BadInput("length".into()))?;
        self.with_session("C_GenerateRandom", |s| s.generate_random_vec(len))
    }

    /// Destroys every object with the key's CKA_ID (its certificate too). Missing
    /// objects are not an error.
    pub(crate) fn destroy(&self, id: Uuid) -> Result<(), HsmError> {
        let [private, secret, public] = objects::KEY_CLASSES;
        self.destroy_classes(id, &[private, secret, public, ObjectClass::CERTIFICATE])
    }

    /// Destroys the key's private, secret and public objects, keeping its certificate
    /// object (imported material deleted: the same material, hence the same certificate,
    /// may come back).
    pub(crate) fn destroy_key_material(&self, id: Uuid) -> Result<(), HsmError> {
        self.destroy_classes(id, &objects::KEY_CLASSES)
    }

    fn destroy_classes(&self, id: Uuid, classes: &[ObjectClass]) -> Result<(), HsmError> {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.with_token_write("C_DestroyObject", |s| {
            objects::destroy_with_id(s, id.as_bytes(), classes, &[]).map(drop)
        })
    }

    /// Key ids of every key object in the token (objects whose CKA_ID is not a UUID
    /// are reported separately), for start-up reconciliation.
    pub(crate) fn token_key_ids(&self) -> Result<(Vec<Uuid>, usize), HsmError> {
        let ids = self.with_token_read("C_FindObjects", objects::list_ids)?;
        let mut keys = Vec::new();
        let mut foreign = 0;
        for (class, id) in ids {
            match Uuid::from_slice(&id) {
                Ok(u) if class != ObjectClass::PUBLIC_KEY => keys.push(u),
                Ok(_) => {}
                Err(_) => foreign += 1,
            }
        }
        keys.sort();
        keys.dedup();
        Ok((keys, foreign))
    }

    /// Looks the key's handles up once and caches them. Both halves are used through
    /// session-object copies (C_CopyObject with CKA_TOKEN false): the private copy stays
    /// inside the token, sensitive and non-extractable like the original, but SoftHSM2
    /// no longer re-reads the token file on every use (measured: ECDSA ~20k/s vs
    /// ~29k/s), and uses never race token-object writes. A copy lives as long as the
    /// pooled session that made it; if that session is replaced the handle fails once
    /// and `retry_if_missing` loads a new copy.
    fn objects(&self, id: Uuid) -> Result<KeyObjects, HsmError> {
        if let Some(o) = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(*o);
        }
        let found = self.with_token_read("C_FindObjects", |s| {
            let Some(objs) = objects::find_token_objects(s, id.as_bytes())? else {
                return Ok(None);
            };
            let session_copy = |h| {
                s.copy_object(h, &[cryptoki::object::Attribute::Token(false)])
                    .unwrap_or(h)
            };
            Ok(Some(KeyObjects {
                private: session_copy(objs.private),
                public: objs.public.map(session_copy),
            }))
        })?;
        let objs = found.ok_or(HsmError::ObjectMissing)?;
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, objs);
        Ok(objs)
    }

    fn flush_handles(&self) {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.audit_key.clear();
    }
}

/// The slot whose token has `label` (the error lists the labels found).
pub fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, String> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?;
    let mut seen = Vec::new();
    for slot in slots {
        if let Ok(info) = pkcs11.get_token_info(slot) {
            let l = info.label().trim().to_string();
            if l == label {
                return Ok(slot);
            }
            if info.token_initialized() {
                seen.push(l);
            }
        }
    }
    Err(format!(
        "no initialized token with this label (tokens found: {seen:?})"
    ))
}
