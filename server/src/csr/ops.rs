//! The certificate operations, applied with the key rules, the store and the token.
//!
//! Blocking (SQLite, PKCS#11): the api layer calls these from the blocking pool. Every
//! signature goes through `KeyManager::sign`, so the key's usage, state and allowed
//! algorithms are checked exactly as for Sign. Hash-based algorithms sign the digest of
//! the to-be-signed bytes (no size limit); Ed25519 signs them whole.

use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::name::Name;

use super::CertError;
use super::build::{self, CertFields, Signed};
use super::chain::{self, CertInfo, Chain};
use super::san::{RequestedExtensions, check_key_usage};
use super::sigalg::default_algorithm;
use crate::hsm::CertificateObject;

use crate::domain::record::KeyRecord;
use crate::domain::spec::{KeyState, KeyUsage, MAX_RAW_MESSAGE, MessageType, SigningAlgorithm};
use crate::keys::{KeyError, KeyManager};
use crate::store::StoredChain;

/// Longest validity of a self-signed certificate, in days.
pub(crate) const MAX_VALIDITY_DAYS: u32 = 3650;

/// What GenerateCsr and SelfSignedCertificate ask for, checked.
#[derive(Debug, Clone)]
pub(crate) struct CertRequest {
    pub(crate) subject: Name,
    pub(crate) extensions: RequestedExtensions,
    /// `None`: the key spec's default.
    pub(crate) algorithm: Option<SigningAlgorithm>,
}

/// A request or certificate signed by a key.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) algorithm: SigningAlgorithm,
    pub(crate) signed: Signed,
}

/// A stored chain, decoded.
#[derive(Debug, Clone)]
pub(crate) struct KeyCertificate {
    pub(crate) stored: StoredChain,
    pub(crate) chain: Chain,
}

/// Builds a CSR for the key and has the token sign it.
pub(crate) fn generate_csr(
    m: &KeyManager,
    key: &KeyRecord,
    req: &CertRequest,
) -> Result<Issued, CertError> {
    let (alg, spki) = prepare(key, req)?;
    let exts = req.extensions.to_extensions(false)?;
    let signed = build::csr(req.subject.clone(), spki, exts, alg, |tbs| {
        token_sign(m, key, alg, tbs)
    })?;
    Ok(Issued {
        algorithm: alg,
        signed,
    })
}

/// Issues a self-signed certificate for the key, valid from now for `days`; with
/// `import`, also stores it as the key's certificate.
pub(crate) fn self_signed(
    m: &KeyManager,
    key: &KeyRecord,
    req: &CertRequest,
    days: u32,
    import: bool,
) -> Result<(Issued, CertInfo), CertError> {
    if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
        return Err(CertError::ValidityDays {
            days,
            max: MAX_VALIDITY_DAYS,
        });
    }
    let (alg, spki) = prepare(key, req)?;
    let exts = req.extensions.to_extensions(true)?;
    let mut serial = m.backend().random(16)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01; // positive, and 16 significant bytes
    let start = u64::try_from(m.now()).unwrap_or(0);
    let fields = CertFields {
        serial,
        not_before: start,
        not_after: start + u64::from(days) * 86_400,
    };
    let signed = build::self_signed(req.subject.clone(), spki, exts, &fields, alg, |tbs| {
        token_sign(m, key, alg, tbs)
    })?;
    let parsed = chain::parse(&signed.der)?;
    let info = chain::info(&parsed.certs[0]);
    if import {
        store_chain(m, key, &parsed)?;
    }
    Ok((
        Issued {
            algorithm: alg,
            signed,
        },
        info,
    ))
}

/// Checks a chain against the key and stores it: the whole chain in the store, the
/// leaf in the token. Returns the leaf's details and the chain length.
pub(crate) fn import(
    m: &KeyManager,
    key: &KeyRecord,
    input: &[u8],
) -> Result<(CertInfo, usize), CertError> {
    let spki = public_key(key)?;
    let parsed = chain::parse(input)?;
    chain::check_leaf_key(&parsed, key.id, spki)?;
    chain::check_order(&parsed)?;
    let info = store_chain(m, key, &parsed)?;
    Ok((info, parsed.der.len()))
}

/// The chain last imported for the key.
pub(crate) fn get(m: &KeyManager, key: &KeyRecord) -> Result<KeyCertificate, CertError> {
    let stored = m
        .store()
        .get_certificate(key.id)?
        .ok_or(CertError::NotFound(key.id))?;
    let chain = chain::parse(&stored.chain).map_err(|e| {
        CertError::Key(KeyError::Internal(format!(
            "stored chain of key {}: {e}",
            key.id
        )))
    })?;
    Ok(KeyCertificate { stored, chain })
}

fn store_chain(m: &KeyManager, key: &KeyRecord, parsed: &Chain) -> Result<CertInfo, CertError> {
    let leaf = &parsed.certs[0].tbs_certificate;
    let enc = |what: &str, r: der::Result<Vec<u8>>| r.map_err(|e| CertError::encoding(what, e));
    let object = CertificateObject {
        value: parsed.der[0].clone(),
        subject: enc("subject", leaf.subject.to_der())?,
        issuer: enc("issuer", leaf.issuer.to_der())?,
        serial: enc("serial number", leaf.serial_number.to_der())?,
    };
    m.backend().put_certificate(key.id, &object)?;
    let info = chain::info(&parsed.certs[0]);
    let row = StoredChain {
        key_id: key.id,
        chain: parsed.der.concat(),
        chain_length: parsed.der.len() as u32,
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        serial: info.serial.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        import_time: m.now(),
    };
    if let Err(e) = m.store().put_certificate(&row) {
        tracing::error!(key_id = %key.id, error = %e, "certificate stored in the token but not in the metadata store");
        return Err(e.into());
    }
    Ok(info)
}

/// The key's SubjectPublicKeyInfo DER; refuses keys that cannot have a certificate.
fn public_key(key: &KeyRecord) -> Result<&[u8], CertError> {
    if key.state == KeyState::Destroyed {
        return Err(KeyError::KeyState {
            key: key.id,
            state: key.state,
        }
        .into());
    }
    key.public_key_der
        .as_deref()
        .ok_or(CertError::NoPublicKey(key.spec))
}

/// Checks what can be checked before signing; returns the algorithm and the SPKI.
fn prepare(
    key: &KeyRecord,
    req: &CertRequest,
) -> Result<(SigningAlgorithm, SubjectPublicKeyInfoOwned), CertError> {
    key.require_usage(KeyUsage::SignVerify)
        .map_err(|e| CertError::Key(e.into()))?;
    let alg = req
        .algorithm
        .or_else(|| default_algorithm(key.spec))
        .ok_or(CertError::CannotSign(key.spec))?;
    check_key_usage(key.spec, &req.extensions.key_usage)?;
    let der = public_key(key)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| {
        CertError::Key(KeyError::Internal(format!(
            "stored public key of {}: {e}",
            key.id
        )))
    })?;
    Ok((alg, spki))
}

/// Signs to-be-signed bytes with the key in the token.
fn token_sign(
    m: &KeyManager,
    key: &KeyRecord,
    alg: SigningAlgorithm,
    tbs: &[u8],
) -> Result<Vec<u8>, CertError> {
    match alg.hash() {
        Some(h) => Ok(m.sign(key, alg, MessageType::Digest, &h.digest(tbs))?),
        None if tbs.len() > MAX_RAW_MESSAGE => Err(CertError::ToBeSignedTooLarge {
            len: tbs.len(),
            algorithm: alg.name(),
            max: MAX_RAW_MESSAGE,
        }),
        None => Ok(m.sign(key, alg, MessageType::Raw, tbs)?),
    }
}
