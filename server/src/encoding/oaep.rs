//! EME-OAEP decoding (RFC 8017 section 7.1.2, step 3) in constant time, for tokens that
//! do the RSA private operation (CKM_RSA_X_509) but refuse OAEP with SHA-256 (SoftHSM2
//! 2.6). See the README, "Encryption algorithms and where they run".
//!
//! Every check runs on every byte whatever the input, and every failure is the same
//! [`DecodeError`]: a caller must not learn *why* a ciphertext was refused (that is the
//! padding oracle of Manger's attack). Only the plaintext's length, which the caller
//! gets anyway, depends on the secret.

use sha2::digest::Digest;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// The encoded message is not a valid OAEP encoding (for this hash and label). Carries
/// nothing on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError;

/// Decodes `em`, the output of the raw RSA private operation left-padded to the modulus
/// length k, with hash `D` (and MGF1 with `D`) and `label`; returns the message.
pub(crate) fn decode<D: Digest>(
    em: &[u8],
    label: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DecodeError> {
    let h_len = <D as Digest>::output_size();
    let k = em.len();
    // The length is public (the modulus size): no need to hide this check.
    if k < 2 * h_len + 2 {
        return Err(DecodeError);
    }
    let mut buf = Zeroizing::new(em.to_vec());
    let (y, rest) = buf.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(h_len);
    // seed = maskedSeed ^ MGF(maskedDB); DB = maskedDB ^ MGF(seed).
    mgf1_xor::<D>(db, seed);
    mgf1_xor::<D>(seed, db);
    let l_hash = D::digest(label);
    let mut good = y[0].ct_eq(&0) & db[..h_len].ct_eq(&l_hash[..]);

    // DB = lHash || PS (zero bytes) || 0x01 || M: find the 0x01 after the zeros.
    let mut looking = Choice::from(1);
    let mut index = 0u32;
    for (i, b) in db[h_len..].iter().enumerate() {
        let is_zero = b.ct_eq(&0);
        let is_one = b.ct_eq(&1);
        index.conditional_assign(&(i as u32), looking & is_one);
        // A byte that is neither 0 nor 1 before the separator spoils the encoding.
        good &= !(looking & !is_zero & !is_one);
        looking &= !is_one;
    }
    good &= !looking;
    if bool::from(good) {
        let start = h_len + index as usize + 1;
        Ok(Zeroizing::new(db[start..].to_vec()))
    } else {
        Err(DecodeError)
    }
}

/// `raw` as exactly `k` bytes, restoring leading zeros the token may have dropped;
/// `None` if longer than `k`.
pub(crate) fn left_pad(raw: &[u8], k: usize) -> Option<Zeroizing<Vec<u8>>> {
    let pad = k.checked_sub(raw.len())?;
    let mut em = Zeroizing::new(vec![0u8; k]);
    em[pad..].copy_from_slice(raw);
    Some(em)
}

/// out ^= MGF1(seed, out.len()) (RFC 8017 appendix B.2.1).
fn mgf1_xor<D: Digest>(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(<D as Digest>::output_size()).enumerate() {
        let mut h = D::new();
        h.update(seed);
        h.update((counter as u32).to_be_bytes());
        let mut mask = h.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
        // The mask XORed with the public masked DB gives DB (the plaintext).
        zeroize::Zeroize::zeroize(&mut mask[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;
    use sha2::Sha256;

    const K: usize = 256;

    /// Masks a chosen DB with a chosen seed: EM = y || maskedSeed || maskedDB.
    fn mask(y: u8, seed: &[u8; 32], db: &[u8]) -> Vec<u8> {
        let mut seed = seed.to_vec();
        let mut db = db.to_vec();
        mgf1_xor::<Sha256>(&seed, &mut db);
        mgf1_xor::<Sha256>(&db, &mut seed);
        [vec![y], seed, db].concat()
    }

    /// DB = lHash || zeros || sep || msg, k - hLen - 1 bytes long.
    fn db(label: &[u8], sep: u8, msg: &[u8]) -> Vec<u8> {
        let ps = K - 32 - 1 - 32 - 1 - msg.len();
        [
            Sha256::digest(label).to_vec(),
            vec![0; ps],
            vec![sep],
            msg.to_vec(),
        ]
        .concat()
    }

    #[test]
    fn left_padding_restores_leading_zeros() {
        assert_eq!(left_pad(&[1, 2], 4).unwrap().as_slice(), [0, 0, 1, 2]);
        assert_eq!(left_pad(&[1, 2, 3, 4], 4).unwrap().as_slice(), [1, 2, 3, 4]);
        assert!(left_pad(&[1; 5], 4).is_none());
    }

    #[test]
    fn well_formed_encodings_decode() {
        for msg in [&b""[..], b"x", b"attack at dawn", &[0u8; 190][..]] {
            let em = mask(0, &[7; 32], &db(b"", 1, msg));
            assert_eq!(em.len(), K);
            assert_eq!(decode::<Sha256>(&em, b"").unwrap().as_slice(), msg);
        }
        // A message that itself starts with 0x00 and 0x01 bytes.
        let em = mask(0, &[9; 32], &db(b"", 1, &[0, 1, 0, 2]));
        assert_eq!(decode::<Sha256>(&em, b"").unwrap().as_slice(), [0, 1, 0, 2]);
    }

    #[test]
    fn every_malformed_encoding_is_the_same_error() {
        let good = db(b"", 1, b"secret");
        // Y != 0.
        assert_eq!(
            decode::<Sha256>(&mask(1, &[7; 32], &good), b""),
            Err(DecodeError)
        );
        // lHash mismatch: another label.
        assert_eq!(
            decode::<Sha256>(&mask(0, &[7; 32], &good), b"label"),
            Err(DecodeError)
        );
        // No 0x01 separator: DB is lHash and zeros only.
        let mut none = good.clone();
        for b in &mut none[32..] {
            *b = 0;
        }
        assert_eq!(
            decode::<Sha256>(&mask(0, &[7; 32], &none), b""),
            Err(DecodeError)
        );
        // A nonzero padding byte before the separator.
        let mut dirty = good.clone();
        dirty[40] = 2;
        assert_eq!(
            decode::<Sha256>(&mask(0, &[7; 32], &dirty), b""),
            Err(DecodeError)
        );
        // Separator other than 0x01.
        assert_eq!(
            decode::<Sha256>(&mask(0, &[7; 32], &db(b"", 2, b"secret")), b""),
            Err(DecodeError)
        );
        // Wrong lengths: too short for SHA-256, and a truncated encoding.
        assert_eq!(decode::<Sha256>(&[0; 65], b""), Err(DecodeError));
        let em = mask(0, &[7; 32], &good);
        assert_eq!(decode::<Sha256>(&em[1..], b""), Err(DecodeError));
        assert_eq!(decode::<Sha256>(&[], b""), Err(DecodeError));
        // Any single flipped bit of a good encoding.
        for i in [0, 1, 20, 33, 64, 100, K - 1] {
            let mut bad = em.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode::<Sha256>(&bad, b""), Err(DecodeError), "byte {i}");
        }
    }

    /// The decoder against an independent OAEP implementation (the `rsa` crate): encrypt
    /// with RSAES-OAEP-SHA-256, do the raw private operation, decode here.
    #[test]
    fn decodes_what_the_rsa_crate_encrypts() {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let public = private.to_public_key();
        let k = public.size();
        for msg in [&b"hello"[..], b"", &[0xff; 62][..]] {
            let ct = public
                .encrypt(&mut rng, rsa::Oaep::new::<Sha256>(), msg)
                .unwrap();
            let c = rsa::BigUint::from_bytes_be(&ct);
            let m = rsa::hazmat::rsa_decrypt_and_check(&private, Some(&mut rng), &c).unwrap();
            let raw = m.to_bytes_be();
            let mut em = vec![0u8; k - raw.len()];
            em.extend_from_slice(&raw);
            assert_eq!(decode::<Sha256>(&em, b"").unwrap().as_slice(), msg);
            // The same ciphertext read as SHA-1 OAEP is refused.
            assert!(decode::<sha1::Sha1>(&em, b"").is_err());
        }
    }
}
