//! Tests of key files and wrapping: round trips through an unwrap made of the rsa and
//! aes-kw crates, and cross-checks both ways with the openssl CLI (which must be
//! installed: `apt-get install openssl`; the tests fail, naming the command, without it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{Oaep, RsaPrivateKey};

use super::*;
use crate::v1::KeySpec;

const ALL: [WrappingAlgorithm; 4] = [
    WrappingAlgorithm::RsaesOaepSha1,
    WrappingAlgorithm::RsaesOaepSha256,
    WrappingAlgorithm::RsaAesKeyWrapSha1,
    WrappingAlgorithm::RsaAesKeyWrapSha256,
];
const KEY_WRAP: [WrappingAlgorithm; 2] = [
    WrappingAlgorithm::RsaAesKeyWrapSha1,
    WrappingAlgorithm::RsaAesKeyWrapSha256,
];

/// Runs `openssl ARGS` (split at spaces) in `dir`; panics with the command line if it
/// fails.
fn openssl(dir: &Path, args: &str) -> Vec<u8> {
    let line = format!("openssl {args}");
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}` ({e}): apt-get install openssl"));
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A temporary directory with an RSA-2048 wrapping key pair made by openssl:
/// wrap.pem (private, PKCS#8) and wrap.pub.der / wrap.pub.pem (SPKI).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let f = Fixture { dir };
        f.ssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out wrap.pem");
        f.ssl("pkey -in wrap.pem -pubout -outform DER -out wrap.pub.der");
        f.ssl("pkey -in wrap.pem -pubout -out wrap.pub.pem");
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ssl(&self, args: &str) -> Vec<u8> {
        openssl(self.dir.path(), args)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).expect(name);
    }

    fn wrapping_public(&self) -> Vec<u8> {
        self.read("wrap.pub.der")
    }

    /// Undoes [`wrap`] with the rsa and aes-kw crates (what the token does).
    fn unwrap(&self, algorithm: WrappingAlgorithm, blob: &[u8]) -> Vec<u8> {
        let pem = String::from_utf8(self.read("wrap.pem")).unwrap();
        let private = RsaPrivateKey::from_pkcs8_pem(&pem).expect("wrap.pem");
        let k = private.size();
        assert!(blob.len() >= k, "wrapped material shorter than the modulus");
        let (oaep_block, rest) = blob.split_at(k);
        let padding = match algorithm {
            WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaAesKeyWrapSha1 => {
                Oaep::new::<sha1::Sha1>()
            }
            _ => Oaep::new::<sha2::Sha256>(),
        };
        let inner = private.decrypt(padding, oaep_block).expect("OAEP decrypt");
        if KEY_WRAP.contains(&algorithm) {
            assert_eq!(inner.len(), 32, "the ephemeral key is AES-256");
            let kek = aes_kw::KekAes256::try_from(inner.as_slice()).unwrap();
            kek.unwrap_with_padding_vec(rest).expect("RFC 5649 unwrap")
        } else {
            assert!(rest.is_empty(), "RSAES_OAEP_* is one OAEP block");
            inner
        }
    }
}

/// openssl's OAEP options for the algorithm's hash (digest and MGF1).
fn oaep_opts(algorithm: WrappingAlgorithm) -> String {
    let md = match algorithm {
        WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaAesKeyWrapSha1 => "sha1",
        _ => "sha256",
    };
    format!("-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:{md} -pkeyopt rsa_mgf1_md:{md}")
}

#[test]
fn round_trips_under_every_algorithm() {
    let f = Fixture::new();
    let public = f.wrapping_public();
    for len in [16, 32] {
        let aes = KeyMaterial::aes(&vec![0x5a; len]).unwrap();
        for algorithm in ALL {
            let blob = wrap(&public, algorithm, &aes).unwrap();
            let expected_len = if KEY_WRAP.contains(&algorithm) {
                256 + len + 8
            } else {
                256
            };
            assert_eq!(blob.len(), expected_len, "{algorithm:?} {len}");
            assert_eq!(f.unwrap(algorithm, &blob), aes.as_bytes(), "{algorithm:?}");
            // OAEP is randomized and the key-encryption key is fresh each time.
            assert_ne!(blob, wrap(&public, algorithm, &aes).unwrap());
        }
    }
    // openssl 3 writes SEC1 here; the material is its PKCS#8 conversion.
    f.ssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -outform DER -out ec.der");
    let ec = KeyMaterial::parse(&f.read("ec.der")).unwrap();
    assert_eq!(ec.spec(), KeySpec::EcP384);
    assert!(rsa::pkcs8::PrivateKeyInfo::try_from(ec.as_bytes()).is_ok());
    for algorithm in KEY_WRAP {
        let blob = wrap(&public, algorithm, &ec).unwrap();
        assert_eq!(f.unwrap(algorithm, &blob), ec.as_bytes());
    }
}

#[test]
fn openssl_unwraps_what_we_wrap() {
    let f = Fixture::new();
    f.ssl("genpkey -algorithm ED25519 -outform DER -out ed.der");
    let material = KeyMaterial::parse(&f.read("ed.der")).unwrap();
    for algorithm in KEY_WRAP {
        let blob = wrap(&f.wrapping_public(), algorithm, &material).unwrap();
        f.write("oaep.bin", &blob[..256]);
        f.write("kw.bin", &blob[256..]);
        let opts = oaep_opts(algorithm);
        let kek = f.ssl(&format!(
            "pkeyutl -decrypt -inkey wrap.pem -in oaep.bin {opts}"
        ));
        assert_eq!(kek.len(), 32, "{algorithm:?}");
        let kek = hex::encode(&kek);
        let unwrapped = f.ssl(&format!(
            "enc -d -id-aes256-wrap-pad -K {kek} -iv A65959A6 -in kw.bin"
        ));
        assert_eq!(unwrapped, f.read("ed.der"), "{algorithm:?}");
    }
    let aes = KeyMaterial::aes(&[7u8; 32]).unwrap();
    for algorithm in [
        WrappingAlgorithm::RsaesOaepSha1,
        WrappingAlgorithm::RsaesOaepSha256,
    ] {
        f.write(
            "oaep.bin",
            &wrap(&f.wrapping_public(), algorithm, &aes).unwrap(),
        );
        let opts = oaep_opts(algorithm);
        let key = f.ssl(&format!(
            "pkeyutl -decrypt -inkey wrap.pem -in oaep.bin {opts}"
        ));
        assert_eq!(key, [7u8; 32], "{algorithm:?}");
    }
}

#[test]
fn we_unwrap_what_openssl_wraps() {
    let f = Fixture::new();
    f.ssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER -out rsa.der");
    for algorithm in KEY_WRAP {
        let kek = f.ssl("rand 32");
        f.write("kek.bin", &kek);
        let opts = oaep_opts(algorithm);
        let mut blob = f.ssl(&format!(
            "pkeyutl -encrypt -pubin -inkey wrap.pub.pem -in kek.bin {opts}"
        ));
        let kek = hex::encode(&kek);
        blob.extend(f.ssl(&format!(
            "enc -e -id-aes256-wrap-pad -K {kek} -iv A65959A6 -in rsa.der"
        )));
        assert_eq!(
            f.unwrap(algorithm, &blob),
            f.read("rsa.der"),
            "{algorithm:?}"
        );
    }
}

/// Every supported key file form parses to the right spec, its PKCS#8 is one openssl
/// reads, and its public half is the one openssl derives.
#[test]
fn key_files_in_every_form() {
    let f = Fixture::new();
    for cmd in [
        "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.pem",
        "ec -in p256.pem -out p256.sec1.pem",
        "ec -in p256.pem -outform DER -out p256.sec1.der",
        "ecparam -genkey -name secp384r1 -out p384.params.pem",
        "rsa -in wrap.pem -traditional -out rsa.pkcs1.pem",
        "rsa -in wrap.pem -traditional -outform DER -out rsa.pkcs1.der",
        "pkey -in wrap.pem -outform DER -out rsa.pkcs8.der",
        "genpkey -algorithm ED25519 -out ed.pem",
    ] {
        f.ssl(cmd);
    }
    let cases = [
        ("p256.pem", KeySpec::EcP256, "PRIVATE KEY"),
        ("p256.sec1.pem", KeySpec::EcP256, "EC PRIVATE KEY"),
        ("p256.sec1.der", KeySpec::EcP256, ""),
        ("p384.params.pem", KeySpec::EcP384, "EC PRIVATE KEY"),
        ("wrap.pem", KeySpec::Rsa2048, "PRIVATE KEY"),
        ("rsa.pkcs1.pem", KeySpec::Rsa2048, "RSA PRIVATE KEY"),
        ("rsa.pkcs1.der", KeySpec::Rsa2048, ""),
        ("rsa.pkcs8.der", KeySpec::Rsa2048, ""),
        ("ed.pem", KeySpec::Ed25519, "PRIVATE KEY"),
    ];
    for (file, spec, label) in cases {
        let text = f.read(file);
        if !label.is_empty() {
            let s = String::from_utf8_lossy(&text);
            assert!(s.contains(&format!("BEGIN {label}-----")), "{file}: {s}");
        }
        let m = KeyMaterial::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(m.spec(), spec, "{file}");
        assert!(!m.is_symmetric());
        f.write("ours.der", m.as_bytes());
        let ours = f.ssl("pkey -inform DER -in ours.der -pubout -outform DER");
        let theirs = f.ssl(&format!("pkey -in {file} -pubout -outform DER"));
        assert_eq!(ours, theirs, "{file}: PKCS#8 as openssl reads it");
        assert_eq!(
            m.public_key_der().unwrap(),
            Some(theirs),
            "{file}: public half"
        );
    }
}

#[test]
fn raw_aes_keys_and_files_that_are_no_key() {
    let m = KeyMaterial::parse(&[1u8; 16]).unwrap();
    assert_eq!((m.spec(), m.is_symmetric()), (KeySpec::Aes128, true));
    assert_eq!(m.public_key_der(), Ok(None));
    assert_eq!(
        KeyMaterial::parse(&[2u8; 32]).unwrap().spec(),
        KeySpec::Aes256
    );
    assert!(
        !format!("{m:?}").contains("1, 1"),
        "Debug shows no key bytes: {m:?}"
    );
    let refused = |file: &[u8], needle: &str| {
        let e = KeyMaterial::parse(file).expect_err(needle).to_string();
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    };
    refused(&[3u8; 24], "24 bytes");
    refused(hex::encode([4u8; 32]).as_bytes(), "xxd -r -p");
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n\
                     -----END ENCRYPTED PRIVATE KEY-----\n";
    refused(encrypted.as_bytes(), "encrypted");
    let f = Fixture::new();
    refused(&f.read("wrap.pub.pem"), "\"PUBLIC KEY\"");
    f.ssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out small.pem");
    refused(&f.read("small.pem"), "1024 bits");
    f.ssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 -out k1.pem");
    refused(&f.read("k1.pem"), "1.3.132.0.10");
}

#[test]
fn wrapping_refusals_and_public_key_files() {
    let f = Fixture::new();
    let public = f.wrapping_public();
    assert_eq!(
        public_key_spki_der(&f.read("wrap.pub.pem")).unwrap(),
        public
    );
    assert_eq!(public_key_spki_der(&public).unwrap(), public);
    let e = public_key_spki_der(&f.read("wrap.pem")).unwrap_err();
    assert!(matches!(e, ImportError::PublicKey(_)), "{e}");
    assert!(public_key_spki_der(b"junk").is_err());

    f.ssl("genpkey -algorithm ED25519 -out ed.pem");
    let ed = KeyMaterial::parse(&f.read("ed.pem")).unwrap();
    for algorithm in [
        WrappingAlgorithm::RsaesOaepSha1,
        WrappingAlgorithm::RsaesOaepSha256,
    ] {
        let e = wrap(&public, algorithm, &ed).unwrap_err();
        assert!(matches!(e, ImportError::Algorithm(_)), "{e}");
        assert!(e.to_string().contains("RSA_AES_KEY_WRAP_SHA_256"), "{e}");
    }
    let aes = KeyMaterial::aes(&[9u8; 32]).unwrap();
    let e = wrap(&public, WrappingAlgorithm::Unspecified, &aes).unwrap_err();
    assert!(matches!(e, ImportError::Algorithm(_)), "{e}");
    let ed_public = ed.public_key_der().unwrap().unwrap();
    let e = wrap(&ed_public, WrappingAlgorithm::RsaAesKeyWrapSha256, &aes).unwrap_err();
    assert!(matches!(e, ImportError::WrappingKey(_)), "{e}");
    // More than OAEP-SHA-256 fits in a 2048-bit block (190 bytes) is refused, not cut.
    let e = wrap_bytes(&public, WrappingAlgorithm::RsaesOaepSha256, &[0u8; 191]).unwrap_err();
    assert!(matches!(e, ImportError::Wrap(_)), "{e}");
}
