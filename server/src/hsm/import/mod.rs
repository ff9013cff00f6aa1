//! Key import in the token: the RSA wrapping key pair behind an import token, and the
//! unwrapping of wrapped material into a key's objects.
//!
//! Everything happens in one pooled session under the token-object write lock:
//! 1. the OAEP block is opened with the wrapping private key: C_UnwrapKey with
//!    CKM_RSA_PKCS_OAEP, or (host-side OAEP-SHA-256, only where the config allows it)
//!    CKM_RSA_X_509 and the decode in hsmd, the bytes going straight into C_CreateObject;
//! 2. for the key-wrap algorithms, the ephemeral AES key from step 1 unwraps the rest
//!    with CKM_AES_KEY_WRAP_PAD (RFC 5649) and is destroyed;
//! 3. the unwrapped material, still a session object, is checked against the key's spec
//!    and by the caller's `accept` (same material as before);
//! 4. only then is it copied to a token object, with a public key object for key pairs.
//!
//! Every session object made here is destroyed before returning, whatever happened, so a
//! refused import leaves nothing in the token. Step 3 lives in `inspect.rs`.

mod inspect;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use super::crypt::oaep;
use super::objects::{self, WRAPPING_KEY_ID_PREFIX};
use super::{HsmError, KeyObjects, Pkcs11Backend};
use crate::domain::spec::{KeySpec, KeyUsage};
use crate::encoding::OaepHash;
use crate::encoding::PublicKeyMaterial;

/// How the OAEP block of wrapped material is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OaepUnwrap {
    /// C_UnwrapKey with CKM_RSA_PKCS_OAEP and this hash: wholly in the token.
    Token(OaepHash),
    /// CKM_RSA_X_509 in the token, the OAEP-SHA-256 decode in hsmd (config switch).
    HostSha256,
}

/// What to unwrap with which import token's wrapping key.
pub(crate) struct Unwrapping<'a> {
    /// The import token's id (the wrapping key's CKA_ID suffix).
    pub(crate) token: Uuid,
    pub(crate) oaep: OaepUnwrap,
    /// The OAEP block carries an ephemeral AES-256 key, and the material follows it
    /// wrapped with AES key wrap with padding.
    pub(crate) key_wrap: bool,
    /// The modulus length of the wrapping key, in bytes (the OAEP block's length).
    pub(crate) modulus_len: usize,
    pub(crate) wrapped: &'a [u8],
}

/// The key the material is for.
pub(crate) struct Target<'a> {
    pub(crate) id: Uuid,
    pub(crate) spec: KeySpec,
    pub(crate) usage: KeyUsage,
    /// The public half the caller says the material has (required for Ed25519).
    pub(crate) public_key: Option<&'a PublicKeyMaterial>,
}

/// What the unwrapped material is, for the caller's checks before it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inspected {
    /// The public half of key-pair material.
    pub(crate) public: Option<PublicKeyMaterial>,
    /// AES keys: AES-ECB encryption of a zero block under the key, computed in the token
    /// (its first 3 bytes are the key check value).
    pub(crate) check_block: Option<[u8; 16]>,
}

/// Why an import is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportRefused {
    /// The wrapped bytes do not unwrap with this wrapping key (altered, wrapped under
    /// another public key or with another algorithm).
    #[error("{0}")]
    Unwrap(String),
    /// It unwrapped, but is not material of the key's type or size.
    #[error("{0}")]
    Spec(String),
    /// The public key given with the material does not match it, or is missing.
    #[error("{0}")]
    PublicKey(String),
    /// Refused by the caller's check (`accept`).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// Session objects made during one import, destroyed on drop.
struct Scratch<'s> {
    session: &'s Session,
    objects: Vec<ObjectHandle>,
}

impl Scratch<'_> {
    fn keep(&mut self, h: ObjectHandle) -> ObjectHandle {
        self.objects.push(h);
        h
    }

    /// Destroys one of the kept objects now.
    fn destroy(&mut self, h: ObjectHandle) {
        self.objects.retain(|o| *o != h);
        if let Err(e) = self.session.destroy_object(h) {
            tracing::error!(error = %e, "destroying an import session object failed");
        }
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for h in self.objects.drain(..) {
            if let Err(e) = self.session.destroy_object(h) {
                tracing::error!(error = %e, "destroying an import session object failed");
            }
        }
    }
}

fn ck(what: &'static str) -> impl FnOnce(CkError) -> ImportRefused {
    move |e| ImportRefused::Hsm(super::error::classify(what, e))
}

impl Pkcs11Backend {
    /// Generates the wrapping key pair of an import token: the private half a token
    /// object (CKA_ID = prefix + token id) that can only unwrap (and, for the host-side
    /// OAEP-SHA-256 decode, do the raw RSA operation), sensitive, never extractable; the
    /// public half a session object, read and destroyed. Returns the public half.
    pub(crate) fn generate_wrapping_key(
        &self,
        token: Uuid,
        key: Uuid,
        bits: u32,
        raw_decrypt: bool,
    ) -> Result<PublicKeyMaterial, HsmError> {
        let public = [
            Attribute::Token(false),
            Attribute::ModulusBits(u64::from(bits).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Verify(false),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Id(wrapping_id(token)),
            Attribute::Label(format!("hsmd-wrapping-key/{key}").into_bytes()),
            Attribute::Unwrap(true),
            Attribute::Decrypt(raw_decrypt),
            Attribute::Sign(false),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
            Attribute::Modifiable(false),
        ];
        self.with_token_write("C_GenerateKeyPair (wrapping key)", |s| {
            let (pubh, privh) =
                s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
            let material = objects::public_key(s, KeySpec::Rsa2048, pubh);
            let _ = s.destroy_object(pubh);
            match material {
                Ok(Some(m)) => Ok(Some(m)),
                other => {
                    let _ = s.destroy_object(privh);
                    other
                }
            }
        })?
        .ok_or(HsmError::ObjectMissing)
    }

    /// The import tokens whose wrapping keys are in the token (for the sweep that
    /// destroys wrapping keys no import token names).
    pub(crate) fn wrapping_key_tokens(&self) -> Result<Vec<Uuid>, HsmError> {
        let ids = self.with_token_read("C_FindObjects (wrapping keys)", |s| {
            objects::token_ids(s, &[ObjectClass::PRIVATE_KEY])
        })?;
        Ok(ids
            .into_iter()
            .filter_map(|(_, id)| {
                let token = id.strip_prefix(WRAPPING_KEY_ID_PREFIX)?;
                Uuid::from_slice(token).ok()
            })
            .collect())
    }

    /// Destroys an import token's wrapping key (missing is not an error).
    pub(crate) fn destroy_wrapping_key(&self, token: Uuid) -> Result<(), HsmError> {
        self.with_token_write("C_DestroyObject (wrapping key)", |s| {
            for h in s.find_objects(&wrapping_key_template(token))? {
                s.destroy_object(h)?;
            }
            Ok(())
        })
    }

    /// Unwraps `u.wrapped` into the key `t`'s objects (see the module comment). `accept`
    /// sees what the material is before it is kept, and may refuse it. Returns what the
    /// material is and the token objects made (for `destroy_objects` if recording fails).
    pub(crate) fn import_material(
        &self,
        u: &Unwrapping<'_>,
        t: &Target<'_>,
        mut accept: impl FnMut(&Inspected) -> Result<(), String>,
    ) -> Result<(Inspected, KeyObjects), ImportRefused> {
        let label = t.id.to_string();
        let template = objects::import_template(t.spec, t.usage, t.id.as_bytes(), &label)
            .ok_or_else(|| HsmError::Unsupported(format!("import of {} keys", t.spec)))?;
        let (block, rest) = u.wrapped.split_at(u.modulus_len.min(u.wrapped.len()));
        let mut outcome = None;
        self.with_token_write("C_UnwrapKey", |s| {
            outcome = Some(install(s, u, t, &template, block, rest, &mut accept));
            // Hand a lost session (or login) back to the pool's check, which replaces it.
            s.get_session_info().map(drop)
        })?;
        outcome.unwrap_or_else(|| Err(HsmError::ObjectMissing.into()))
    }

    /// Destroys exactly these token objects (the rollback of an import that could not be
    /// recorded; other objects with the same CKA_ID are left alone).
    pub(crate) fn destroy_objects(&self, objs: KeyObjects) -> Result<(), HsmError> {
        self.with_token_write("C_DestroyObject (rollback)", |s| {
            let public = objs.public.map(|p| s.destroy_object(p)).unwrap_or(Ok(()));
            s.destroy_object(objs.private).and(public)
        })
    }
}

/// Steps 1 to 4 of the module comment, on one session.
fn install(
    s: &Session,
    u: &Unwrapping<'_>,
    t: &Target<'_>,
    template: &[Attribute],
    block: &[u8],
    rest: &[u8],
    mut accept: impl FnMut(&Inspected) -> Result<(), String>,
) -> Result<(Inspected, KeyObjects), ImportRefused> {
    let mut scratch = Scratch {
        session: s,
        objects: Vec::new(),
    };
    let wrapping = find_wrapping_key(s, u)?;
    let ephemeral_template = ephemeral_key_template();
    let first: &[Attribute] = if u.key_wrap {
        &ephemeral_template
    } else {
        template
    };
    let opened = open_oaep(s, u.oaep, wrapping, block, first)?;
    let material = scratch.keep(opened);
    let material = if u.key_wrap {
        let unwrapped = s.unwrap_key(&Mechanism::AesKeyWrapPad, material, rest, template);
        // The ephemeral key has done its one job.
        scratch.destroy(material);
        scratch.keep(unwrapped.map_err(|e| kwp_refusal(t.spec, e))?)
    } else {
        material
    };
    let inspected = inspect::inspect(&mut scratch, t, material)?;
    accept(&inspected).map_err(ImportRefused::Refused)?;
    destroy_leftovers(s, t)?;
    let made = copy_to_token(s, t, material, inspected.public.as_ref())?;
    Ok((inspected, made))
}

/// The import token's wrapping key (its private half, CKA_UNWRAP only).
fn find_wrapping_key(s: &Session, u: &Unwrapping<'_>) -> Result<ObjectHandle, ImportRefused> {
    s.find_objects(&wrapping_key_template(u.token))
        .map_err(ck("C_FindObjects (wrapping key)"))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ImportRefused::Unwrap(
                "the import token's wrapping key is no longer in the token".into(),
            )
        })
}

/// The session object the ephemeral AES key of RSA_AES_KEY_WRAP is unwrapped into: it
/// can unwrap the material and nothing else, and never leaves the token.
fn ephemeral_key_template() -> [Attribute; 13] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Wrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]
}

/// The key is PENDING_IMPORT: objects with its CKA_ID are leftovers of an import that was
/// not recorded (a failed rollback, a crash). Never let them stand beside the new
/// material, where a lookup could pick either.
fn destroy_leftovers(s: &Session, t: &Target<'_>) -> Result<(), ImportRefused> {
    let leftovers = objects::destroy_with_id(
        s,
        t.id.as_bytes(),
        &objects::KEY_CLASSES,
        &[Attribute::Token(true)],
    )
    .map_err(ck("C_DestroyObject (leftovers)"))?;
    if leftovers > 0 {
        tracing::warn!(key_id = %t.id, leftovers, "destroyed leftover objects of an unrecorded import");
    }
    Ok(())
}

/// Step 4: the checked session object copied to a token object, and the public half (if
/// any) created beside it; nothing is left behind when the public half fails.
fn copy_to_token(
    s: &Session,
    t: &Target<'_>,
    material: ObjectHandle,
    public: Option<&PublicKeyMaterial>,
) -> Result<KeyObjects, ImportRefused> {
    // The secret key's session copy was extractable for `aes_key_len`; SoftHSM2 refuses
    // CKA_EXTRACTABLE in the copy template of a key where it is already false.
    let mut copy = vec![Attribute::Token(true)];
    if !t.spec.is_asymmetric() {
        copy.push(Attribute::Extractable(false));
    }
    let private = s
        .copy_object(material, &copy)
        .map_err(ck("C_CopyObject (imported key)"))?;
    let mut made = KeyObjects {
        private,
        public: None,
    };
    if let Some(public) = public {
        let label = t.id.to_string();
        let created = objects::public_object(t.spec, t.usage, t.id.as_bytes(), &label, public)
            .ok_or_else(|| HsmError::Unsupported(format!("public key object for {}", t.spec)))
            .and_then(|tpl| {
                s.create_object(&tpl)
                    .map_err(|e| super::error::classify("C_CreateObject (public key)", e))
            });
        match created {
            Ok(h) => made.public = Some(h),
            Err(e) => {
                let _ = s.destroy_object(private);
                return Err(e.into());
            }
        }
    }
    Ok(made)
}

/// Step 1: the OAEP block, opened into a session object made with `template`.
fn open_oaep(
    s: &Session,
    path: OaepUnwrap,
    wrapping: ObjectHandle,
    block: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, ImportRefused> {
    let refused = || {
        ImportRefused::Unwrap(
            "the wrapped key material does not unwrap with this import token's wrapping key and algorithm (altered bytes, another wrapping key, or another algorithm)".into(),
        )
    };
    match path {
        OaepUnwrap::Token(hash) => s
            .unwrap_key(&oaep(hash), wrapping, block, template)
            .map_err(|e| match e {
                CkError::Pkcs11(rv, _) if is_bad_wrapped(rv) => refused(),
                other => ck("C_UnwrapKey (RSA-OAEP)")(other),
            }),
        OaepUnwrap::HostSha256 => {
            let raw = Zeroizing::new(match s.decrypt(&Mechanism::RsaX509, wrapping, block) {
                Ok(v) => v,
                Err(CkError::Pkcs11(rv, _)) if is_bad_wrapped(rv) => return Err(refused()),
                Err(e) => return Err(ck("C_Decrypt (RSA X.509)")(e)),
            });
            let em = crate::encoding::oaep::left_pad(&raw, block.len()).ok_or_else(refused)?;
            let key =
                crate::encoding::oaep::decode::<sha2::Sha256>(&em, b"").map_err(|_| refused())?;
            if ![16, 24, 32].contains(&key.len()) {
                return Err(ImportRefused::Spec(format!(
                    "the unwrapped key is {} bytes: not an AES key (16, 24 or 32 bytes)",
                    key.len()
                )));
            }
            let mut with_value = template.to_vec();
            with_value.push(Attribute::Value(key.to_vec()));
            let made = s.create_object(&with_value);
            for a in &mut with_value {
                if let Attribute::Value(v) = a {
                    v.zeroize();
                }
            }
            made.map_err(ck("C_CreateObject (unwrapped key)"))
        }
    }
}

/// Return values of a token refusing the wrapped bytes themselves.
fn is_bad_wrapped(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::ArgumentsBad
    )
}

/// Step 2's refusals: SoftHSM2 answers CKR_GENERAL_ERROR for a block whose integrity
/// check fails (altered bytes) and CKR_FUNCTION_FAILED or a template error when the
/// plaintext is not a key of the template's type.
fn kwp_refusal(spec: KeySpec, e: CkError) -> ImportRefused {
    match e {
        CkError::Pkcs11(
            RvError::GeneralError
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange,
            _,
        ) => ImportRefused::Unwrap(
            "the AES-key-wrapped part does not unwrap under the ephemeral key (altered or truncated bytes)".into(),
        ),
        CkError::Pkcs11(
            rv @ (RvError::FunctionFailed
            | RvError::TemplateInconsistent
            | RvError::KeyTypeInconsistent),
            _,
        ) if spec == KeySpec::Ed25519 => ImportRefused::Spec(format!(
            "the token could not unwrap it as an Ed25519 private key ({rv}): either the material is not a PKCS#8 Ed25519 key, or this token cannot import Ed25519 keys (SoftHSM2 2.6 cannot)"
        )),
        CkError::Pkcs11(
            RvError::FunctionFailed
            | RvError::TemplateInconsistent
            | RvError::AttributeValueInvalid
            | RvError::KeyTypeInconsistent
            | RvError::DataInvalid,
            _,
        ) => ImportRefused::Spec(format!(
            "the unwrapped material is not {} as {spec} needs (traditional PKCS#1/SEC1 files must be converted: openssl pkcs8 -topk8 -nocrypt -outform DER)",
            expected_material(spec),
        )),
        other => ck("C_UnwrapKey (AES key wrap with padding)")(other),
    }
}

fn expected_material(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => "a PKCS#8 RSA private key",
        KeySpec::EcP256 | KeySpec::EcP384 => "a PKCS#8 EC private key",
        KeySpec::Ed25519 => "a PKCS#8 Ed25519 private key",
        KeySpec::Aes256 | KeySpec::Aes128 => "raw AES key bytes",
        KeySpec::Sm2 => "SM2 material",
    }
}

fn wrapping_id(token: Uuid) -> Vec<u8> {
    [WRAPPING_KEY_ID_PREFIX, token.as_bytes()].concat()
}

fn wrapping_key_template(token: Uuid) -> [Attribute; 3] {
    [
        Attribute::Token(true),
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(wrapping_id(token)),
    ]
}
