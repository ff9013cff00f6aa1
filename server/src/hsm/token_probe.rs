//! Start-up trials that need key pairs on tokens without session key objects.
//!
//! tpm2-pkcs11 refuses CKA_TOKEN false in a key template (CKR_ATTRIBUTE_VALUE_INVALID),
//! so a probe that wants a throw-away key pair first asks for session objects and, if the
//! token refuses them, makes token objects labelled `hsmd-probe` and destroys them at
//! once. The usage probe learns whether the token keeps CKA_DECRYPT false on a signing
//! key (SoftHSM2 does; tpm2-pkcs11 1.9 sets sign and decrypt on every TPM key and refuses
//! a template with either false); the object probe whether session key objects and
//! C_CopyObject work, which import needs.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

/// CKA_LABEL of probe objects made as token objects (destroyed before start-up ends).
const PROBE_LABEL: &[u8] = b"hsmd-probe";
/// DER OID of secp256r1.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A throw-away key pair: `(public, private)`, session objects where the token makes
/// them, token objects otherwise. Destroy both when done.
pub(crate) fn probe_key_pair(
    s: &Session,
    mechanism: &Mechanism,
    public: &[Attribute],
    private: &[Attribute],
) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle)> {
    probe_key_pair_where(s, mechanism, public, private).map(|(pu, pr, _)| (pu, pr))
}

/// As [`probe_key_pair`], also telling whether the pair is made of session objects.
fn probe_key_pair_where(
    s: &Session,
    mechanism: &Mechanism,
    public: &[Attribute],
    private: &[Attribute],
) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle, bool)> {
    let with = |token: bool, t: &[Attribute]| {
        let mut v = vec![Attribute::Token(token)];
        if token {
            v.push(Attribute::Label(PROBE_LABEL.to_vec()));
        }
        v.extend(t.iter().cloned());
        v
    };
    match s.generate_key_pair(mechanism, &with(false, public), &with(false, private)) {
        Ok((pu, pr)) => Ok((pu, pr, true)),
        Err(_) => s
            .generate_key_pair(mechanism, &with(true, public), &with(true, private))
            .map(|(pu, pr)| (pu, pr, false)),
    }
}

/// What the token does with objects, as import needs it: material is unwrapped into a
/// session object, checked, then copied into a token object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectProbe {
    /// Key objects with CKA_TOKEN false can be made (tpm2-pkcs11: no).
    pub(crate) session_keys: bool,
    /// C_CopyObject works (tpm2-pkcs11: CKR_FUNCTION_NOT_SUPPORTED).
    pub(crate) copy: bool,
}

/// Tries a P-256 probe pair as session objects and a C_CopyObject of its private half.
/// Without EC key generation nothing is tried and both are assumed to work (the
/// operations that need them then report the token's own error).
pub(crate) fn probe_objects(s: &Session, mechs: &[MechanismType]) -> ObjectProbe {
    let assumed = ObjectProbe {
        session_keys: true,
        copy: true,
    };
    if !mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN) {
        return assumed;
    }
    let public = [
        Attribute::EcParams(OID_P256.to_vec()),
        Attribute::Verify(true),
    ];
    let private = [
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
    ];
    let Ok((pu, pr, session_keys)) =
        probe_key_pair_where(s, &Mechanism::EccKeyPairGen, &public, &private)
    else {
        return assumed;
    };
    let copy = match s.copy_object(pr, &[Attribute::Token(false)]) {
        Ok(c) => {
            destroy(s, &[c]);
            true
        }
        Err(_) => false,
    };
    destroy(s, &[pr, pu]);
    ObjectProbe { session_keys, copy }
}

/// True if the token forces CKA_SIGN and CKA_DECRYPT (and their public twins) on its
/// key pairs: a P-256 pair with CKA_DECRYPT false is refused, one without that
/// attribute is made with CKA_DECRYPT true. False when the token keeps the flags as
/// asked, or has no EC key generation to try it with.
pub(crate) fn usage_forced_by_token(s: &Session, mechs: &[MechanismType]) -> bool {
    if !mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN) {
        return false;
    }
    let public = |strict: bool| {
        let mut v = vec![
            Attribute::EcParams(OID_P256.to_vec()),
            Attribute::Verify(true),
        ];
        if strict {
            v.push(Attribute::Encrypt(false));
        }
        v
    };
    let private = |strict: bool| {
        let mut v = vec![
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
        ];
        if strict {
            v.push(Attribute::Decrypt(false));
        }
        v
    };
    let mech = Mechanism::EccKeyPairGen;
    if let Ok((pu, pr)) = probe_key_pair(s, &mech, &public(true), &private(true)) {
        destroy(s, &[pr, pu]);
        return false;
    }
    let Ok((pu, pr)) = probe_key_pair(s, &mech, &public(false), &private(false)) else {
        return false;
    };
    let forced = s
        .get_attributes(pr, &[AttributeType::Decrypt])
        .ok()
        .is_some_and(|a| a.iter().any(|x| matches!(x, Attribute::Decrypt(true))));
    destroy(s, &[pr, pu]);
    forced
}

/// Destroys probe objects; a failure leaves a labelled `hsmd-probe` object behind,
/// which start-up reconciliation reports among the foreign objects.
pub(crate) fn destroy(s: &Session, objects: &[ObjectHandle]) {
    for o in objects {
        if let Err(e) = s.destroy_object(*o) {
            tracing::warn!(error = %e, "could not destroy a probe object (label hsmd-probe)");
        }
    }
}
