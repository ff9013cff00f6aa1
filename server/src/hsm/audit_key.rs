//! The audit key: an ECDSA P-256 key pair in the token that signs audit checkpoints and
//! nothing else. Created on first start with CKA_SIGN only (no decrypt, unwrap or
//! derive), sensitive and non-extractable like every key. Its CKA_ID is the text
//! `hsmd-audit`, which no key id (a UUID: 16 bytes) can name, so KeyService can neither
//! list nor use it; reconciliation counts it among the token's foreign objects.

use std::sync::Mutex;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::objects::{self, KeyObjects};
use super::{HsmError, Pkcs11Backend};
use crate::domain::spec::KeySpec;
use crate::encoding::PublicKeyMaterial;

/// CKA_ID and CKA_LABEL of the audit key.
pub(crate) const AUDIT_KEY_ID: &[u8] = b"hsmd-audit";
/// DER OID of secp256r1.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Cached handles of the audit key.
#[derive(Default)]
pub(crate) struct AuditKeyCache(Mutex<Option<KeyObjects>>);

impl AuditKeyCache {
    /// Forgets the handles (they die with the login).
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Pkcs11Backend {
    /// Finds the audit key, creating it on first start; returns its public half.
    pub(crate) fn audit_public_key(&self) -> Result<PublicKeyMaterial, HsmError> {
        let objs = self.audit_objects()?;
        let public = objs.public.ok_or(HsmError::ObjectMissing)?;
        self.with_token_read("C_GetAttributeValue", |s| {
            objects::public_key(s, KeySpec::EcP256, public)
        })?
        .ok_or(HsmError::ObjectMissing)
    }

    /// Signs a SHA-256 digest with the audit key (CKM_ECDSA); raw r‖s. The key is used
    /// as a token object (checkpoints are rare), so the call shares the token-object
    /// lock like every other read of token objects.
    pub(crate) fn sign_audit_digest(&self, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        let sign = |objs: KeyObjects| {
            self.with_token_read("C_Sign", |s| {
                s.sign(&Mechanism::Ecdsa, objs.private, digest)
            })
        };
        let r = sign(self.audit_objects()?);
        if matches!(r, Err(HsmError::ObjectMissing)) {
            self.audit_key.clear();
            return sign(self.audit_objects()?);
        }
        r
    }

    fn audit_objects(&self) -> Result<KeyObjects, HsmError> {
        if let Some(o) = *self.audit_key.0.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(o);
        }
        // Not holding the cache lock here: a lost session flushes the cache while the
        // token lock is held. Find-or-create runs under the token write lock, so two
        // first calls still make one key.
        let objs =
            self.with_token_write("C_GenerateKeyPair", |s| match objects::find_token_objects(
                s,
                AUDIT_KEY_ID,
            )? {
                Some(o) => Ok(o),
                None => generate(s, self.capabilities.usage_forced_by_token),
            })?;
        *self.audit_key.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(objs);
        Ok(objs)
    }
}

/// The audit key pair; on a token that forces the usage flags (tpm2-pkcs11) the false
/// ones are left out, and only hsmd's checkpoint code ever uses the key.
fn generate(s: &Session, usage_forced: bool) -> cryptoki::error::Result<KeyObjects> {
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Id(AUDIT_KEY_ID.to_vec()),
            Attribute::Label(AUDIT_KEY_ID.to_vec()),
        ]
    };
    let mut private = common(true);
    private.extend([
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]);
    let mut public = common(false);
    public.extend([
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::EcParams(OID_P256.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ]);
    if usage_forced {
        objects::drop_false_usage(&mut private);
        objects::drop_false_usage(&mut public);
    }
    let (pubh, privh): (ObjectHandle, ObjectHandle) =
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
    tracing::info!("created the audit checkpoint key (hsmd-audit) in the token");
    Ok(KeyObjects {
        private: privh,
        public: Some(pubh),
    })
}
