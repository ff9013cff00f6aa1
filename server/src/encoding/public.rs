//! Public keys and signature encodings: SubjectPublicKeyInfo from the token's public
//! attributes, and ECDSA signatures between the token's raw r‖s and DER.

use p256::pkcs8::EncodePublicKey;

use super::PublicKeyMaterial;
use crate::domain::spec::KeySpec;

/// SubjectPublicKeyInfo DER of a public key read from the token.
pub(crate) fn spki_der(material: &PublicKeyMaterial) -> Result<Vec<u8>, String> {
    let doc = match material {
        PublicKeyMaterial::Rsa { modulus, exponent } => {
            rsa_public(modulus, exponent)?.to_public_key_der()
        }
        PublicKeyMaterial::Ec {
            spec: KeySpec::EcP256,
            point,
        } => p256::PublicKey::from_sec1_bytes(point)
            .map_err(|e| format!("P-256 point: {e}"))?
            .to_public_key_der(),
        PublicKeyMaterial::Ec {
            spec: KeySpec::EcP384,
            point,
        } => p384::PublicKey::from_sec1_bytes(point)
            .map_err(|e| format!("P-384 point: {e}"))?
            .to_public_key_der(),
        PublicKeyMaterial::Ec { spec, .. } => return Err(format!("EC point for {spec}")),
        PublicKeyMaterial::Ed25519 { key } => ed25519_dalek::VerifyingKey::from_bytes(key)
            .map_err(|e| format!("Ed25519 key: {e}"))?
            .to_public_key_der(),
    };
    doc.map(|d| d.as_bytes().to_vec())
        .map_err(|e| format!("SPKI encoding: {e}"))
}

/// The rsa crate's public key of a token's big-endian modulus and public exponent.
pub(crate) fn rsa_public(modulus: &[u8], exponent: &[u8]) -> Result<rsa::RsaPublicKey, String> {
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
    )
    .map_err(|e| format!("RSA public key: {e}"))
}

/// PEM ("PUBLIC KEY") of an SPKI DER.
pub(crate) fn spki_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// DER SEQUENCE { r, s } from the token's raw r‖s.
pub(crate) fn ecdsa_raw_to_der(spec: KeySpec, raw: &[u8]) -> Result<Vec<u8>, String> {
    match spec {
        KeySpec::EcP256 => p256::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|e| format!("ECDSA P-256 signature from token: {e}")),
        KeySpec::EcP384 => p384::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|e| format!("ECDSA P-384 signature from token: {e}")),
        other => Err(format!("ECDSA signature for {other}")),
    }
}

/// Raw r‖s from a DER signature, or `None` if it is not a well-formed signature for
/// the curve (the caller answers valid=false).
pub(crate) fn ecdsa_der_to_raw(spec: KeySpec, der: &[u8]) -> Option<Vec<u8>> {
    match spec {
        KeySpec::EcP256 => p256::ecdsa::Signature::from_der(der)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        KeySpec::EcP384 => p384::ecdsa::Signature::from_der(der)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        _ => None,
    }
}

/// The public key material of a SubjectPublicKeyInfo DER for a key of `spec`, or why it
/// is not one.
pub(crate) fn from_spki(spec: KeySpec, der: &[u8]) -> Result<PublicKeyMaterial, String> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePublicKey;
    let bad = |e: &dyn std::fmt::Display| format!("public_key_der is not a {spec} public key: {e}");
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            use rsa::traits::PublicKeyParts;
            let k = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
            Ok(PublicKeyMaterial::Rsa {
                modulus: k.n().to_bytes_be(),
                exponent: k.e().to_bytes_be(),
            })
        }
        KeySpec::EcP256 => {
            let k = p256::PublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
            Ok(PublicKeyMaterial::Ec {
                spec,
                point: k.to_encoded_point(false).as_bytes().to_vec(),
            })
        }
        KeySpec::EcP384 => {
            let k = p384::PublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
            Ok(PublicKeyMaterial::Ec {
                spec,
                point: k.to_encoded_point(false).as_bytes().to_vec(),
            })
        }
        KeySpec::Ed25519 => {
            let k = ed25519_dalek::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?;
            Ok(PublicKeyMaterial::Ed25519 { key: k.to_bytes() })
        }
        _ => Err(format!("{spec} keys have no public key")),
    }
}

/// True when `sig` is a valid Ed25519 signature of `msg` by `key`.
pub(crate) fn ed25519_verifies(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    key.verify_strict(msg, &sig).is_ok()
}

/// The uncompressed public point of the key that made two ECDSA signatures (raw r‖s)
/// over two digests: the candidates recovered from the first that verify the second.
pub(crate) fn recover_ec_point(spec: KeySpec, signed: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    macro_rules! recover {
        ($curve:ident) => {{
            use ecdsa::RecoveryId;
            use $curve::ecdsa::signature::hazmat::PrehashVerifier;
            use $curve::ecdsa::{Signature, VerifyingKey};
            let [(d1, s1), rest @ ..] = signed else {
                return None;
            };
            let s1 = Signature::from_slice(s1).ok()?;
            let others: Vec<(&[u8], Signature)> = rest
                .iter()
                .map(|(d, s)| Some((d.as_slice(), Signature::from_slice(s).ok()?)))
                .collect::<Option<_>>()?;
            let found: Vec<VerifyingKey> = (0u8..4)
                .filter_map(RecoveryId::from_byte)
                .filter_map(|id| VerifyingKey::recover_from_prehash(d1, &s1, id).ok())
                .filter(|k| others.iter().all(|(d, s)| k.verify_prehash(d, s).is_ok()))
                .collect();
            match found.as_slice() {
                [k] => Some(k.to_encoded_point(false).as_bytes().to_vec()),
                _ => None,
            }
        }};
    }
    match spec {
        KeySpec::EcP256 => recover!(p256),
        KeySpec::EcP384 => recover!(p384),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_round_trip() {
        let mut raw = vec![0u8; 64];
        raw[31] = 5; // r = 5
        raw[32] = 0x80; // s with the top bit set needs a leading zero in DER
        raw[63] = 1;
        let der = ecdsa_raw_to_der(KeySpec::EcP256, &raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(ecdsa_der_to_raw(KeySpec::EcP256, &der), Some(raw));
        assert_eq!(ecdsa_der_to_raw(KeySpec::EcP256, b"garbage"), None);
        assert_eq!(ecdsa_der_to_raw(KeySpec::EcP256, &[]), None);
        assert_eq!(ecdsa_der_to_raw(KeySpec::Rsa2048, &der), None);
    }

    #[test]
    fn ec_public_key_is_recovered_from_two_signatures() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let signed: Vec<(Vec<u8>, Vec<u8>)> = [[1u8; 32], [2u8; 32]]
            .iter()
            .map(|d| {
                let sig: p256::ecdsa::Signature = sk.sign_prehash(d).unwrap();
                (d.to_vec(), sig.to_bytes().to_vec())
            })
            .collect();
        let want = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        assert_eq!(
            recover_ec_point(KeySpec::EcP256, &signed),
            Some(want.clone())
        );
        let material = PublicKeyMaterial::Ec {
            spec: KeySpec::EcP256,
            point: want,
        };
        let der = spki_der(&material).unwrap();
        assert_eq!(from_spki(KeySpec::EcP256, &der).unwrap(), material);
        assert!(from_spki(KeySpec::EcP384, &der).is_err());
        assert!(from_spki(KeySpec::Rsa2048, &der).is_err());
        // A second signature over another digest that the key did not make: no key.
        let mut forged = signed.clone();
        forged[1].0 = vec![3u8; 32];
        assert_eq!(recover_ec_point(KeySpec::EcP256, &forged), None);
    }

    #[test]
    fn pem_wraps_at_64() {
        let pem = spki_pem(&[0u8; 100]);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn ed25519_spki_has_the_oid() {
        let real = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes();
        let der = spki_der(&PublicKeyMaterial::Ed25519 { key: real }).unwrap();
        assert_eq!(der.len(), 44);
        assert!(der.windows(5).any(|w| w == [0x06, 0x03, 0x2b, 0x65, 0x70]));
    }
}
