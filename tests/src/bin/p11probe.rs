//! `p11probe`: tries to get private key material out of the daemon's token with plain
//! PKCS#11 calls, independently of hsmd, and prints what happened as JSON.
//!
//! Usage: `SOFTHSM2_CONF=DIR/softhsm2.conf p11probe MODULE TOKEN_LABEL PIN_FILE KEY_ID...`
//! where KEY_ID is a key UUID (the objects' CKA_LABEL). For each key it reports the
//! private object's protection attributes, whether C_GetAttributeValue reveals the
//! secret value, and whether C_WrapKey under a fresh session AES key succeeds. As a
//! control it does the same wrap on an extractable session key of its own, so a refusal
//! for hsmd's keys means "not extractable", not "wrapping does not work here".
//!
//! It runs as its own process because SoftHSM2 reads SOFTHSM2_CONF once per process.

use std::process::ExitCode;

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    mechanism::Mechanism,
    object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};
use serde_json::{Value, json};

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    match probe(std::env::args().skip(1).collect()) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p11probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn probe(args: Vec<String>) -> Res<Value> {
    let [module, label, pin_file, key_ids @ ..] = args.as_slice() else {
        return Err("usage: p11probe MODULE TOKEN_LABEL PIN_FILE KEY_ID...".into());
    };
    let pkcs11 = Pkcs11::new(module).map_err(|e| format!("load {module}: {e}"))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let slot = pkcs11
        .get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .map(|info| info.label().trim() == label)
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("no token labelled {label}"))?;
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| format!("C_OpenSession: {e}"))?;
    let pin = std::fs::read_to_string(pin_file).map_err(|e| format!("read {pin_file}: {e}"))?;
    session
        .login(UserType::User, Some(&AuthPin::from(pin.trim().to_owned())))
        .map_err(|e| format!("C_Login: {e}"))?;

    // A token without session AES keys (tpm2-pkcs11) has nothing to wrap with: the
    // report says so, and the wrap attempts are left out.
    let wrapping_key = session_aes_key(&session);
    let mut keys = serde_json::Map::new();
    for key_id in key_ids {
        let wrapping_key = wrapping_key.as_ref().ok().copied();
        keys.insert(key_id.clone(), probe_key(&session, wrapping_key, key_id)?);
    }
    let mut report = json!({ "keys": keys });
    match wrapping_key {
        Ok(wrapping_key) => {
            let control = control_key(&session)?;
            report["wrapping_key"] = json!(true);
            report["control_wrap"] = describe_wrap(&session, wrapping_key, control);
        }
        Err(e) => {
            report["wrapping_key"] = json!(false);
            report["wrapping_key_error"] = json!(e);
        }
    }
    Ok(report)
}

/// An AES-256 wrapping key that lives only in this session.
fn session_aes_key(session: &Session) -> Res<ObjectHandle> {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
                Attribute::Encrypt(true),
            ],
        )
        .map_err(|e| format!("C_GenerateKey AES: {e}"))
}

/// An extractable P-256 private key in this session, for the control wrap.
fn control_key(session: &Session) -> Res<ObjectHandle> {
    let p256_oid = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (_public, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(false), Attribute::EcParams(p256_oid)],
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Sign(true),
            ],
        )
        .map_err(|e| format!("C_GenerateKeyPair control: {e}"))?;
    Ok(private)
}

fn describe_wrap(session: &Session, wrapping_key: ObjectHandle, key: ObjectHandle) -> Value {
    match session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, key) {
        Ok(blob) => json!({ "wrapped": true, "bytes": blob.len() }),
        Err(e) => json!({ "wrapped": false, "error": e.to_string() }),
    }
}

fn probe_key(session: &Session, wrapping_key: Option<ObjectHandle>, key_id: &str) -> Res<Value> {
    let private = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(key_id.as_bytes().to_vec()),
        ])
        .map_err(|e| format!("C_FindObjects {key_id}: {e}"))?;
    let [handle] = private.as_slice() else {
        return Ok(json!({ "private_objects": private.len() }));
    };
    let mut report = serde_json::Map::new();
    report.insert("private_objects".into(), json!(1));
    let flags = session
        .get_attributes(
            *handle,
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Id,
            ],
        )
        .map_err(|e| format!("C_GetAttributeValue {key_id}: {e}"))?;
    for attr in flags {
        let (name, value) = match attr {
            Attribute::Token(b) => ("token", json!(b)),
            Attribute::Private(b) => ("private", json!(b)),
            Attribute::Sensitive(b) => ("sensitive", json!(b)),
            Attribute::Extractable(b) => ("extractable", json!(b)),
            Attribute::AlwaysSensitive(b) => ("always_sensitive", json!(b)),
            Attribute::NeverExtractable(b) => ("never_extractable", json!(b)),
            Attribute::Id(id) => ("id_hex", json!(hex::encode(id))),
            _ => continue,
        };
        report.insert(name.into(), value);
    }
    let secret_attrs = [
        (AttributeType::Value, "value"),
        (AttributeType::PrivateExponent, "private_exponent"),
        (AttributeType::Prime1, "prime_1"),
    ];
    let infos = session
        .get_attribute_info(*handle, &secret_attrs.map(|(t, _)| t))
        .map_err(|e| format!("C_GetAttributeValue info {key_id}: {e}"))?;
    for ((_, name), info) in secret_attrs.iter().zip(infos) {
        let text = match info {
            AttributeInfo::Sensitive => "sensitive".to_owned(),
            AttributeInfo::TypeInvalid => "type_invalid".to_owned(),
            AttributeInfo::Unavailable => "unavailable".to_owned(),
            AttributeInfo::Available(n) => format!("available({n} bytes)"),
        };
        report.insert(format!("{name}_attribute"), json!(text));
    }
    if let Some(wrapping_key) = wrapping_key {
        report.insert("wrap".into(), describe_wrap(session, wrapping_key, *handle));
    }
    Ok(Value::Object(report))
}
