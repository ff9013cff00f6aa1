//! Public keys and signature encodings: SubjectPublicKeyInfo from the token's public
//! attributes, and ECDSA signatures between the token's raw r‖s and DER.

use p256::pkcs8::EncodePublicKey;

use super::spec::KeySpec;
use crate::hsm::PublicKeyMaterial;

/// SubjectPublicKeyInfo DER of a public key read from the token.
pub fn spki_der(material: &PublicKeyMaterial) -> Result<Vec<u8>, String> {
    let doc = match material {
        PublicKeyMaterial::Rsa { modulus, exponent } => {
            let n = rsa::BigUint::from_bytes_be(modulus);
            let e = rsa::BigUint::from_bytes_be(exponent);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("RSA public key: {e}"))?;
            key.to_public_key_der()
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

/// PEM ("PUBLIC KEY") of an SPKI DER.
pub fn spki_pem(der: &[u8]) -> String {
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
pub fn ecdsa_raw_to_der(spec: KeySpec, raw: &[u8]) -> Result<Vec<u8>, String> {
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
pub fn ecdsa_der_to_raw(spec: KeySpec, der: &[u8]) -> Option<Vec<u8>> {
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
