//! Key specs and signing algorithms as the tests see them: which algorithms each spec
//! allows, the hash behind each, and how `openssl` verifies its signatures.
//!
//! These tables are written from the API contract (keys.proto), not taken from the
//! server, so a server that drifts from the contract fails here.

use std::path::{Path, PathBuf};

use hsmd_proto::v1::{
    CreateKeyRequest, GetPublicKeyRequest, KeySpec, KeyUsage, MessageType, SignRequest,
    SigningAlgorithm, VerifyRequest, key_service_client::KeyServiceClient,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tonic::{Response, Status, transport::Channel};

use crate::tools::{CmdOutput, run_unchecked};

/// Writes the public key of `key` (PEM, from GetPublicKey) to `dir/name`, for openssl.
pub async fn public_key_pem_file(
    keys: &mut KeyServiceClient<Channel>,
    key: &str,
    dir: &Path,
    name: &str,
) -> PathBuf {
    let public = keys
        .get_public_key(GetPublicKeyRequest {
            key_id: key.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetPublicKey {key}: {s:?}"))
        .into_inner();
    crate::tools::write_file(dir, name, public.public_key_pem.as_bytes())
}

/// Every RSA signing algorithm.
pub const RSA_ALGORITHMS: [SigningAlgorithm; 6] = [
    SigningAlgorithm::RsaPkcs1Sha256,
    SigningAlgorithm::RsaPkcs1Sha384,
    SigningAlgorithm::RsaPkcs1Sha512,
    SigningAlgorithm::RsaPssSha256,
    SigningAlgorithm::RsaPssSha384,
    SigningAlgorithm::RsaPssSha512,
];

/// Every signing algorithm the API names.
pub const ALL_ALGORITHMS: [SigningAlgorithm; 9] = [
    SigningAlgorithm::RsaPkcs1Sha256,
    SigningAlgorithm::RsaPkcs1Sha384,
    SigningAlgorithm::RsaPkcs1Sha512,
    SigningAlgorithm::RsaPssSha256,
    SigningAlgorithm::RsaPssSha384,
    SigningAlgorithm::RsaPssSha512,
    SigningAlgorithm::EcdsaSha256,
    SigningAlgorithm::EcdsaSha384,
    SigningAlgorithm::Ed25519Sha512,
];

/// The algorithms keys.proto says a spec allows.
pub fn allowed_algorithms(spec: KeySpec) -> Vec<SigningAlgorithm> {
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => RSA_ALGORITHMS.to_vec(),
        KeySpec::EcP256 => vec![SigningAlgorithm::EcdsaSha256],
        KeySpec::EcP384 => vec![SigningAlgorithm::EcdsaSha384],
        KeySpec::Ed25519 => vec![SigningAlgorithm::Ed25519Sha512],
        other => panic!("{other:?} is not a signing spec"),
    }
}

/// The hash an algorithm uses, as openssl names it; `None` for pure Ed25519.
pub fn openssl_digest(alg: SigningAlgorithm) -> Option<&'static str> {
    use SigningAlgorithm::*;
    match alg {
        RsaPkcs1Sha256 | RsaPssSha256 | EcdsaSha256 => Some("sha256"),
        RsaPkcs1Sha384 | RsaPssSha384 | EcdsaSha384 => Some("sha384"),
        RsaPkcs1Sha512 | RsaPssSha512 => Some("sha512"),
        Ed25519Sha512 => None,
        Unspecified => panic!("unspecified algorithm"),
    }
}

/// The digest of `message` with the algorithm's hash (for MessageType DIGEST).
pub fn digest(alg: SigningAlgorithm, message: &[u8]) -> Vec<u8> {
    match openssl_digest(alg) {
        Some("sha256") => Sha256::digest(message).to_vec(),
        Some("sha384") => Sha384::digest(message).to_vec(),
        Some("sha512") => Sha512::digest(message).to_vec(),
        _ => panic!("{alg:?} has no separate digest"),
    }
}

/// True for the RSASSA-PSS algorithms.
pub fn is_pss(alg: SigningAlgorithm) -> bool {
    matches!(
        alg,
        SigningAlgorithm::RsaPssSha256
            | SigningAlgorithm::RsaPssSha384
            | SigningAlgorithm::RsaPssSha512
    )
}

/// RSA modulus size in bytes, which is also the signature size.
pub fn rsa_bytes(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::Rsa2048 => Some(256),
        KeySpec::Rsa3072 => Some(384),
        KeySpec::Rsa4096 => Some(512),
        _ => None,
    }
}

/// What `openssl pkey -pubin -text` must print for a spec's public key.
pub fn openssl_key_description(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Rsa2048 => "Public-Key: (2048 bit)",
        KeySpec::Rsa3072 => "Public-Key: (3072 bit)",
        KeySpec::Rsa4096 => "Public-Key: (4096 bit)",
        KeySpec::EcP256 => "prime256v1",
        KeySpec::EcP384 => "secp384r1",
        KeySpec::Ed25519 => "ED25519 Public-Key",
        other => panic!("{other:?} is not a signing spec"),
    }
}

/// Verifies `sig` over the message in `msg` with the PEM public key, using only the
/// openssl CLI. Returns whether openssl accepted it; panics if openssl could not even
/// run the check (unreadable key or signature file).
pub fn openssl_verify(alg: SigningAlgorithm, pub_pem: &Path, msg: &Path, sig: &Path) -> bool {
    let mut cmd = std::process::Command::new("openssl");
    match openssl_digest(alg) {
        Some(md) => {
            cmd.arg("dgst").arg(format!("-{md}"));
            if is_pss(alg) {
                cmd.args(["-sigopt", "rsa_padding_mode:pss"])
                    .args(["-sigopt", "rsa_pss_saltlen:digest"]);
            }
            cmd.arg("-verify")
                .arg(pub_pem)
                .arg("-signature")
                .arg(sig)
                .arg(msg);
        }
        None => {
            cmd.args(["pkeyutl", "-verify", "-pubin", "-inkey"])
                .arg(pub_pem)
                .arg("-rawin")
                .arg("-in")
                .arg(msg)
                .arg("-sigfile")
                .arg(sig);
        }
    }
    interpret_openssl_verify(run_unchecked(&mut cmd))
}

fn interpret_openssl_verify(out: CmdOutput) -> bool {
    let text = format!("{}{}", out.stdout, out.stderr);
    if out.success() && (text.contains("Verified OK") || text.contains("Verified Successfully")) {
        return true;
    }
    if text.contains("Verification failure") || text.contains("Verification Failure") {
        return false;
    }
    panic!("openssl could not run the verification\n{}", out.describe());
}

/// Creates a SIGN_VERIFY key and returns its id.
pub async fn create_key(
    keys: &mut KeyServiceClient<Channel>,
    spec: KeySpec,
    alias: &str,
) -> String {
    let req = CreateKeyRequest {
        spec: spec as i32,
        usage: KeyUsage::SignVerify as i32,
        alias: alias.to_owned(),
        ..Default::default()
    };
    crate::keys::create(keys, req, &format!("{spec:?}")).await
}

/// A Sign request.
pub async fn sign(
    keys: &mut KeyServiceClient<Channel>,
    key_id: &str,
    alg: SigningAlgorithm,
    message_type: MessageType,
    message: &[u8],
) -> Result<Response<hsmd_proto::v1::SignResponse>, Status> {
    keys.sign(SignRequest {
        key_id: key_id.to_owned(),
        algorithm: alg as i32,
        message_type: message_type as i32,
        message: message.to_vec(),
    })
    .await
}

/// A Verify request.
pub async fn verify(
    keys: &mut KeyServiceClient<Channel>,
    key_id: &str,
    alg: SigningAlgorithm,
    message_type: MessageType,
    message: &[u8],
    signature: &[u8],
) -> Result<Response<hsmd_proto::v1::VerifyResponse>, Status> {
    keys.verify(VerifyRequest {
        key_id: key_id.to_owned(),
        algorithm: alg as i32,
        message_type: message_type as i32,
        message: message.to_vec(),
        signature: signature.to_vec(),
    })
    .await
}

/// A deterministic test message of `len` bytes.
pub fn message(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
