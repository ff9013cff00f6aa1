//! `KeyManager`: the key rules applied with the store and the backend.
//!
//! Every method blocks (SQLite, PKCS#11): the api layer calls it from the blocking
//! pool. Key creation is ordered so that a failure leaves no orphan: objects are made
//! in the token, then the metadata is written, and the objects are destroyed if that
//! write fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{KeyError, KeyRef, truncate, validate_alias};
use crate::clock::{SharedClock, SystemClock};
use crate::domain::record::{KeyRecord, Rotation, Transition, deletion_window};
use crate::domain::spec::{
    HashAlg, KeyOrigin, KeySpec, KeyState, KeyUsage, MAX_RAW_MESSAGE, MessageType, SigningAlgorithm,
};
use crate::encoding::public;
use crate::hsm::{Pkcs11Backend, SignMechanism};
use crate::store::{Alias, KeyFilter, Store, StoreError};

/// What CreateKey asks for.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub(crate) spec: KeySpec,
    pub(crate) usage: KeyUsage,
    pub(crate) origin: KeyOrigin,
    pub(crate) alias: Option<String>,
    pub(crate) description: String,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) idempotency_token: Option<String>,
    /// Automatic rotation every this many days (AES_256 ENCRYPT_DECRYPT keys only).
    pub(crate) rotation_period_days: Option<u32>,
}

/// Applies the key rules.
pub(crate) struct KeyManager {
    pub(super) backend: Arc<Pkcs11Backend>,
    pub(super) store: Arc<Store>,
    pub(super) import: super::import::ImportConfig,
    /// Held by every import-material change (import, delete, expiry), which re-reads the
    /// key under it: two calls on one key never both put objects in the token.
    pub(super) material_lock: std::sync::Mutex<()>,
    /// Wrapping keys seen in the token with no import token row, and when first seen
    /// (see `destroy_orphan_wrapping_keys`).
    pub(super) orphan_wrapping_keys: std::sync::Mutex<std::collections::HashMap<Uuid, i64>>,
    /// Every date the rules write or compare (creation, deletion, import tokens, expiry).
    pub(super) clock: SharedClock,
}

impl KeyManager {
    pub(crate) fn new(backend: Arc<Pkcs11Backend>, store: Arc<Store>) -> Self {
        KeyManager {
            backend,
            store,
            import: Default::default(),
            material_lock: Default::default(),
            orphan_wrapping_keys: Default::default(),
            clock: SystemClock::shared(),
        }
    }

    /// With another clock than the system's (tests move a `ManualClock`).
    pub(crate) fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock every date of this daemon comes from.
    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Current time in unix seconds, by this manager's clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// With `[import]` settings other than the defaults.
    pub(crate) fn with_import(mut self, import: super::import::ImportConfig) -> Self {
        self.import = import;
        self
    }

    /// The backend (for token info and random bytes).
    pub(crate) fn backend(&self) -> &Pkcs11Backend {
        &self.backend
    }

    /// The metadata store (the certificate operations keep their own table in it).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Looks a key up by id or alias.
    pub(crate) fn resolve(&self, key: &KeyRef) -> Result<KeyRecord, KeyError> {
        let id = match key {
            KeyRef::Id(id) => *id,
            KeyRef::Alias(a) => self
                .store
                .resolve_alias(a)?
                .ok_or_else(|| KeyError::AliasNotFound(a.clone()))?,
        };
        self.reload(id)
    }

    /// Creates a key in the token and records it, tagged `created-by=<principal>`. With
    /// an idempotency token already used by this principal, returns the key made then
    /// (or INVALID_ARGUMENT if the request differs from that one's); two concurrent
    /// calls with one token still make one key.
    pub(crate) fn create(&self, principal: &str, mut req: NewKey) -> Result<KeyRecord, KeyError> {
        check_new_key(&req)?;
        req.tags
            .insert(super::CREATED_BY_TAG.to_string(), principal.to_string());
        let caps = self.backend.capabilities();
        let external = req.origin == KeyOrigin::External;
        if req.spec == KeySpec::Aes128 && !external {
            return Err(KeyError::UnsupportedKeySpec(
                "AES_128 is offered for imported keys only (origin EXTERNAL); generated AES keys are AES_256".into(),
            ));
        }
        let offered = caps.offers_spec(req.spec)
            || (external && req.spec == KeySpec::Aes128 && caps.offers_spec(KeySpec::Aes256));
        // AES_128 exists for imports only and needs what AES_256 needs.
        let named = if req.spec == KeySpec::Aes128 {
            KeySpec::Aes256
        } else {
            req.spec
        };
        if !offered && let Some(r) = caps.refusal(named.name()) {
            return Err(r.into());
        }
        if !offered {
            return Err(KeyError::UnsupportedKeySpec(format!(
                "{} keys are not supported by this token (it lacks the mechanisms); offered: {}",
                req.spec,
                join(
                    self.backend
                        .capabilities()
                        .key_specs
                        .iter()
                        .map(|s| s.name())
                )
            )));
        }
        if external {
            self.check_importable(req.spec)?;
        }
        let alias = req.alias.as_deref().map(validate_alias).transpose()?;
        if let Some(existing) = self.earlier(principal, &req, alias.as_deref())? {
            return Ok(existing);
        }
        if let Some(a) = &alias
            && self.store.resolve_alias(a)?.is_some()
        {
            return Err(KeyError::AliasExists(a.clone()));
        }
        let id = Uuid::new_v4();
        if external {
            // No material yet: nothing in the token to roll back.
            let record = self.finish_create(id, principal, &req, alias.as_deref());
            if record.is_err()
                && let Some(existing) = self.earlier(principal, &req, alias.as_deref())?
            {
                return Ok(existing);
            }
            return record;
        }
        let record = self.creating(id, || {
            self.backend.generate(id, req.spec, req.usage)?;
            let record = self.finish_create(id, principal, &req, alias.as_deref());
            if record.is_err()
                && let Err(e) = self.backend.destroy(id)
            {
                tracing::error!(key_id = %id, error = %e, "rollback of a half-made key failed; start-up reconciliation will report it");
            }
            record
        });
        // Lost a race with a call carrying the same token: answer with its key.
        if record.is_err()
            && let Some(existing) = self.earlier(principal, &req, alias.as_deref())?
        {
            return Ok(existing);
        }
        record
    }

    /// Runs `make`, which creates token objects with CKA_ID `object_id` and records them
    /// in the store (or rolls them back), under a creation note in the store: if hsmd
    /// dies in between, start-up reconciliation destroys the half-made objects.
    pub(super) fn creating<T>(
        &self,
        object_id: Uuid,
        make: impl FnOnce() -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        self.store.begin_creation(object_id, self.now())?;
        let result = make();
        if let Err(e) = self.store.end_creation(object_id) {
            tracing::warn!(%object_id, error = %e, "creation note not cleared; start-up reconciliation clears it");
        }
        result
    }

    /// The key an earlier CreateKey with the same idempotency token made, if any.
    fn earlier(
        &self,
        principal: &str,
        req: &NewKey,
        alias: Option<&str>,
    ) -> Result<Option<KeyRecord>, KeyError> {
        let Some(token) = &req.idempotency_token else {
            return Ok(None);
        };
        let Some(existing) = self.store.key_by_idempotency(principal, token)? else {
            return Ok(None);
        };
        let same = existing.spec == req.spec
            && existing.usage == req.usage
            && existing.origin == req.origin
            && existing.description == req.description
            && existing.tags == req.tags
            && alias.is_none_or(|a| existing.aliases.iter().any(|x| x == a));
        if !same {
            return Err(KeyError::IdempotencyMismatch(existing.id));
        }
        Ok(Some(existing))
    }

    fn finish_create(
        &self,
        id: Uuid,
        principal: &str,
        req: &NewKey,
        alias: Option<&str>,
    ) -> Result<KeyRecord, KeyError> {
        let external = req.origin == KeyOrigin::External;
        let now = self.now();
        let public_key_der = if req.spec.is_asymmetric() && !external {
            let material = self.backend.public_key(id, req.spec)?;
            Some(public::spki_der(&material).map_err(KeyError::Internal)?)
        } else {
            None
        };
        let mut record = KeyRecord {
            id,
            spec: req.spec,
            usage: req.usage,
            origin: req.origin,
            state: if external {
                KeyState::PendingImport
            } else {
                KeyState::Enabled
            },
            description: req.description.clone(),
            tags: req.tags.clone(),
            created_by: principal.to_string(),
            create_time: now,
            deletion_time: None,
            destroy_time: None,
            public_key_der,
            import_time: None,
            valid_to: None,
            key_check_value: None,
            aliases: alias.iter().map(|a| a.to_string()).collect(),
            versions: Vec::new(),
            rotation: req
                .rotation_period_days
                .and_then(|d| Rotation::every(d, now)),
        };
        record.versions = KeyRecord::first_version(id, record.create_time);
        self.store
            .insert_key(&record, alias, req.idempotency_token.as_deref())
            .map_err(|e| match e {
                StoreError::AliasExists => {
                    KeyError::AliasExists(alias.unwrap_or_default().to_string())
                }
                other => other.into(),
            })?;
        record.aliases.sort();
        Ok(record)
    }

    /// Lists keys; returns the page and the token of the next one ("" when last).
    pub(crate) fn list(
        &self,
        mut filter: KeyFilter,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, String), KeyError> {
        if !page_token.is_empty() {
            filter.after = Some(decode_page_token(page_token)?);
        }
        let limit = filter.limit;
        filter.limit = limit + 1;
        let mut keys = self.store.list_keys(&filter)?;
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last()
                .map(|k| hex::encode(format!("{}:{}", k.create_time, k.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((keys, next))
    }

    /// Applies a lifecycle transition. `days` is the deletion window for
    /// ScheduleKeyDeletion (0 = default).
    pub(crate) fn transition(
        &self,
        key: &KeyRecord,
        t: Transition,
        days: u32,
    ) -> Result<KeyRecord, KeyError> {
        let mut to = t.apply(key.state).map_err(|r| {
            KeyError::InvalidKeyState(format!(
                "cannot {:?} key {} while it is {}",
                r.transition, key.id, r.from
            ))
        })?;
        // An EXTERNAL key scheduled for deletion before it got material goes back to
        // waiting for it, not to DISABLED (which EnableKey would turn into an ENABLED
        // key without material).
        if t == Transition::CancelDeletion
            && key.origin == KeyOrigin::External
            && key.import_time.is_none()
        {
            to = KeyState::PendingImport;
        }
        let deletion_time = match t {
            Transition::ScheduleDeletion => {
                let d = deletion_window(days).ok_or(KeyError::InvalidDeletionWindow(days))?;
                Some(self.now() + i64::from(d) * 86_400)
            }
            Transition::Destroy => key.deletion_time,
            _ => None,
        };
        if to != key.state {
            if t == Transition::Destroy {
                self.destroy_objects(key)?;
            }
            let destroy_time = (t == Transition::Destroy).then(|| self.now());
            self.store
                .set_state(key.id, key.state, to, deletion_time, destroy_time)?;
        }
        self.reload(key.id)
    }

    /// The key's record as the store has it now.
    pub(super) fn reload(&self, id: Uuid) -> Result<KeyRecord, KeyError> {
        self.store
            .get_key(id)?
            .ok_or_else(|| KeyError::KeyNotFound(id.to_string()))
    }

    /// Creates an alias for a key.
    pub(crate) fn create_alias(&self, alias: &str, key: &KeyRecord) -> Result<Alias, KeyError> {
        let alias = validate_alias(alias)?;
        self.store
            .create_alias(&alias, key.id, self.now())
            .map_err(|e| alias_error(e, &alias))
    }

    /// Points an alias at another key.
    pub(crate) fn update_alias(&self, alias: &str, key: &KeyRecord) -> Result<Alias, KeyError> {
        let alias = validate_alias(alias)?;
        self.store
            .update_alias(&alias, key.id, self.now())
            .map_err(|e| alias_error(e, &alias))
    }

    /// Deletes an alias; returns the key it pointed at.
    pub(crate) fn delete_alias(&self, alias: &str) -> Result<Uuid, KeyError> {
        let alias = validate_alias(alias)?;
        self.store
            .delete_alias(&alias)
            .map_err(|e| alias_error(e, &alias))
    }

    /// Lists aliases in name order after `page_token`.
    pub(crate) fn list_aliases(
        &self,
        key: Option<Uuid>,
        page_token: &str,
        limit: usize,
    ) -> Result<(Vec<Alias>, String), KeyError> {
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                String::from_utf8(hex::decode(page_token).map_err(|_| bad_page())?)
                    .map_err(|_| bad_page())?,
            )
        };
        let mut list = self.store.list_aliases(key, after.as_deref(), limit + 1)?;
        let next = if list.len() > limit {
            list.truncate(limit);
            list.last()
                .map(|a| hex::encode(&a.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((list, next))
    }

    /// Signs with an ENABLED SIGN_VERIFY key.
    pub(crate) fn sign(
        &self,
        key: &KeyRecord,
        alg: SigningAlgorithm,
        mt: MessageType,
        msg: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let (mech, input) = self.prepare(key, alg, mt, msg)?;
        let sig = self.backend.sign(key.id, mech, &input)?;
        match alg {
            SigningAlgorithm::EcdsaSha256 | SigningAlgorithm::EcdsaSha384 => {
                public::ecdsa_raw_to_der(key.spec, &sig).map_err(KeyError::Internal)
            }
            _ => Ok(sig),
        }
    }

    /// Verifies in the token; a signature that does not verify gives `Ok(false)`.
    pub(crate) fn verify(
        &self,
        key: &KeyRecord,
        alg: SigningAlgorithm,
        mt: MessageType,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<bool, KeyError> {
        let (mech, input) = self.prepare(key, alg, mt, msg)?;
        let sig = match alg {
            SigningAlgorithm::EcdsaSha256 | SigningAlgorithm::EcdsaSha384 => {
                match public::ecdsa_der_to_raw(key.spec, sig) {
                    Some(raw) => raw,
                    None => return Ok(false),
                }
            }
            _ => sig.to_vec(),
        };
        if sig.is_empty() {
            return Ok(false);
        }
        Ok(self.backend.verify(key.id, mech, &input, &sig)?)
    }

    /// Checks usage, algorithm, message and state; returns the token mechanism and the
    /// bytes it takes.
    fn prepare(
        &self,
        key: &KeyRecord,
        alg: SigningAlgorithm,
        mt: MessageType,
        msg: &[u8],
    ) -> Result<(SignMechanism, Vec<u8>), KeyError> {
        key.require_usage(KeyUsage::SignVerify)?;
        let allowed = key.spec.signing_algorithms();
        if allowed.contains(&alg)
            && let Some(r) = self.backend.capabilities().refusal(alg.name())
        {
            return Err(r.into());
        }
        if !allowed.contains(&alg) || !self.backend.capabilities().offers_algorithm(alg) {
            return Err(KeyError::AlgorithmNotAllowed {
                algorithm: alg.name().to_string(),
                spec: key.spec.name(),
                allowed: join(allowed.iter().map(|a| a.name())),
            });
        }
        check_message(alg, mt, msg)?;
        key.require_enabled(self.now())?;
        Ok(mechanism(
            alg,
            mt,
            msg,
            &self.backend.capabilities().ecdsa_hashes,
        ))
    }
}

fn check_new_key(req: &NewKey) -> Result<(), KeyError> {
    if !req.spec.allowed_usages().contains(&req.usage) {
        return Err(KeyError::UsageNotAllowed {
            usage: req.usage,
            spec: req.spec,
            allowed: join(req.spec.allowed_usages().iter().map(|u| u.name())),
        });
    }
    if req.description.len() > 1024 {
        return Err(KeyError::InvalidArgument(
            "description is over 1024 bytes".into(),
        ));
    }
    if req.tags.len() > 50 {
        return Err(KeyError::InvalidArgument(format!(
            "{} tags; at most 50 are allowed",
            req.tags.len()
        )));
    }
    for (k, v) in &req.tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(KeyError::InvalidArgument(format!(
                "tag '{}': keys must be 1..128 bytes and values at most 256",
                truncate(k, 40)
            )));
        }
    }
    if req
        .idempotency_token
        .as_ref()
        .is_some_and(|t| t.len() > 128)
    {
        return Err(KeyError::InvalidArgument(
            "idempotency_token is over 128 bytes".into(),
        ));
    }
    if let Some(days) = req.rotation_period_days {
        super::rotation::check_rotation(req.spec, req.usage, req.origin, days, 0)?;
    }
    Ok(())
}

fn check_message(alg: SigningAlgorithm, mt: MessageType, msg: &[u8]) -> Result<(), KeyError> {
    match (mt, alg.hash()) {
        (MessageType::Raw, _) if msg.len() > MAX_RAW_MESSAGE => Err(KeyError::MessageTooLarge {
            len: msg.len(),
            max: MAX_RAW_MESSAGE,
        }),
        (MessageType::Raw, _) => Ok(()),
        (MessageType::Digest, None) => Err(KeyError::DigestNotOffered {
            algorithm: alg.name(),
        }),
        (MessageType::Digest, Some(h)) if msg.len() != h.output_len() => {
            Err(KeyError::DigestLength {
                algorithm: alg.name(),
                expected: h.output_len(),
                got: msg.len(),
            })
        }
        (MessageType::Digest, Some(_)) => Ok(()),
    }
}

/// The token mechanism and its input for a checked request. RAW ECDSA messages are
/// hashed by the token when it lists CKM_ECDSA_SHA* for that hash (`token_ecdsa_hashes`),
/// here otherwise. Public so the benchmark's raw baseline does exactly the same work.
pub fn mechanism(
    alg: SigningAlgorithm,
    mt: MessageType,
    msg: &[u8],
    token_ecdsa_hashes: &[HashAlg],
) -> (SignMechanism, Vec<u8>) {
    use SigningAlgorithm::*;
    let raw = mt == MessageType::Raw;
    let h = alg.hash().unwrap_or(HashAlg::Sha512);
    match alg {
        RsaPkcs1Sha256 | RsaPkcs1Sha384 | RsaPkcs1Sha512 if raw => {
            (SignMechanism::RsaPkcs1(h), msg.to_vec())
        }
        RsaPkcs1Sha256 | RsaPkcs1Sha384 | RsaPkcs1Sha512 => {
            (SignMechanism::RsaPkcs1Digest(h), msg.to_vec())
        }
        RsaPssSha256 | RsaPssSha384 | RsaPssSha512 if raw => {
            (SignMechanism::RsaPss(h), msg.to_vec())
        }
        RsaPssSha256 | RsaPssSha384 | RsaPssSha512 => {
            (SignMechanism::RsaPssDigest(h), msg.to_vec())
        }
        EcdsaSha256 | EcdsaSha384 if raw && token_ecdsa_hashes.contains(&h) => {
            (SignMechanism::Ecdsa(h), msg.to_vec())
        }
        EcdsaSha256 | EcdsaSha384 if raw => (SignMechanism::EcdsaDigest, h.digest(msg)),
        EcdsaSha256 | EcdsaSha384 => (SignMechanism::EcdsaDigest, msg.to_vec()),
        Ed25519 => (SignMechanism::Ed25519, msg.to_vec()),
    }
}

fn alias_error(e: StoreError, alias: &str) -> KeyError {
    match e {
        StoreError::AliasExists => KeyError::AliasExists(alias.to_string()),
        StoreError::AliasNotFound => KeyError::AliasNotFound(alias.to_string()),
        other => other.into(),
    }
}

fn decode_page_token(t: &str) -> Result<(i64, String), KeyError> {
    let text =
        String::from_utf8(hex::decode(t).map_err(|_| bad_page())?).map_err(|_| bad_page())?;
    let (time, id) = text.split_once(':').ok_or_else(bad_page)?;
    Ok((time.parse().map_err(|_| bad_page())?, id.to_string()))
}

fn bad_page() -> KeyError {
    KeyError::InvalidPageToken
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_rules() {
        use SigningAlgorithm::*;
        assert!(check_message(RsaPkcs1Sha256, MessageType::Raw, &[0; 4096]).is_ok());
        assert!(matches!(
            check_message(RsaPkcs1Sha256, MessageType::Raw, &[0; 4097]),
            Err(KeyError::MessageTooLarge { len: 4097, .. })
        ));
        assert!(matches!(
            check_message(EcdsaSha384, MessageType::Digest, &[0; 32]),
            Err(KeyError::DigestLength {
                expected: 48,
                got: 32,
                ..
            })
        ));
        assert!(check_message(RsaPssSha512, MessageType::Digest, &[0; 64]).is_ok());
        assert!(matches!(
            check_message(Ed25519, MessageType::Digest, &[0; 64]),
            Err(KeyError::DigestNotOffered { .. })
        ));
    }

    #[test]
    fn ecdsa_raw_messages_are_hashed_in_hsmd_unless_the_token_can() {
        use SigningAlgorithm::{EcdsaSha256, EcdsaSha384};
        let (mech, input) = mechanism(EcdsaSha256, MessageType::Raw, b"abc", &[]);
        assert_eq!(mech, SignMechanism::EcdsaDigest);
        assert_eq!(input, HashAlg::Sha256.digest(b"abc"));
        // A token with CKM_ECDSA_SHA256 only: it hashes SHA-256 messages, hsmd SHA-384.
        let token = [HashAlg::Sha256];
        let (mech, input) = mechanism(EcdsaSha256, MessageType::Raw, b"abc", &token);
        assert_eq!(mech, SignMechanism::Ecdsa(HashAlg::Sha256));
        assert_eq!(input, b"abc");
        let (mech, input) = mechanism(EcdsaSha384, MessageType::Raw, b"abc", &token);
        assert_eq!(mech, SignMechanism::EcdsaDigest);
        assert_eq!(input, HashAlg::Sha384.digest(b"abc"));
        // A DIGEST request is signed as given.
        let (mech, _) = mechanism(EcdsaSha256, MessageType::Digest, &[1; 32], &token);
        assert_eq!(mech, SignMechanism::EcdsaDigest);
        let (mech, input) = mechanism(
            SigningAlgorithm::RsaPssSha384,
            MessageType::Digest,
            &[1; 48],
            &[],
        );
        assert_eq!(mech, SignMechanism::RsaPssDigest(HashAlg::Sha384));
        assert_eq!(input, vec![1; 48]);
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = hex::encode("12:abc");
        assert_eq!(decode_page_token(&t).unwrap(), (12, "abc".to_string()));
        assert!(decode_page_token("zz").is_err());
        assert!(decode_page_token(&hex::encode("nocolon")).is_err());
    }
}
