//! Encryption calls as the tests make them, and the `openssl pkeyutl` side of RSA-OAEP:
//! ciphertexts made by openssl with the exported public key, which only the private key
//! in the token can open.

use std::path::Path;
use std::process::Command;

use hsmd_proto::v1::{
    CreateKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, EncryptionAlgorithm,
    KeySpec, KeyUsage, key_service_client::KeyServiceClient,
};
use tonic::{Response, Status, transport::Channel};

use crate::tools::{run, write_file};

/// Creates an ENCRYPT_DECRYPT key (or SIGN_VERIFY with `sign`) and returns its id.
pub async fn create_key(
    keys: &mut KeyServiceClient<Channel>,
    spec: KeySpec,
    usage: KeyUsage,
    alias: &str,
) -> String {
    let req = CreateKeyRequest {
        spec: spec as i32,
        usage: usage as i32,
        alias: alias.to_owned(),
        ..Default::default()
    };
    crate::keys::create(keys, req, &format!("{spec:?}/{usage:?}")).await
}

/// An Encrypt call.
pub async fn encrypt(
    keys: &mut KeyServiceClient<Channel>,
    key_id: &str,
    alg: EncryptionAlgorithm,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Response<hsmd_proto::v1::EncryptResponse>, Status> {
    keys.encrypt(EncryptRequest {
        key_id: key_id.to_owned(),
        plaintext: plaintext.to_vec(),
        encryption_algorithm: alg as i32,
        aad: aad.to_vec(),
    })
    .await
}

/// A Decrypt call (`key_id` "" for a blob that names its key).
pub async fn decrypt(
    keys: &mut KeyServiceClient<Channel>,
    key_id: &str,
    alg: EncryptionAlgorithm,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Response<DecryptResponse>, Status> {
    keys.decrypt(DecryptRequest {
        key_id: key_id.to_owned(),
        ciphertext: ciphertext.to_vec(),
        encryption_algorithm: alg as i32,
        aad: aad.to_vec(),
    })
    .await
}

/// The plaintext of a successful Decrypt; panics with the status otherwise.
pub fn plaintext_of(r: Result<Response<DecryptResponse>, Status>, what: &str) -> Vec<u8> {
    match r {
        Ok(resp) => {
            let mut d = resp.into_inner();
            std::mem::take(&mut d.plaintext)
        }
        Err(s) => panic!("{what}: {}", crate::status::describe(&s)),
    }
}

/// The digest openssl names for an OAEP algorithm.
pub fn oaep_md(alg: EncryptionAlgorithm) -> &'static str {
    match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => "sha1",
        EncryptionAlgorithm::RsaesOaepSha256 => "sha256",
        other => panic!("{other:?} is not OAEP"),
    }
}

/// `openssl pkeyutl -encrypt` with RSA-OAEP (hash and MGF1 hash `md`, no label) and the
/// public key `pub_pem`; returns the ciphertext.
pub fn openssl_oaep_encrypt(dir: &Path, pub_pem: &Path, md: &str, plaintext: &[u8]) -> Vec<u8> {
    let input = write_file(dir, &format!("oaep-{md}.in"), plaintext);
    let out = dir.join(format!("oaep-{md}.ct"));
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(pub_pem)
        .args(["-pkeyopt", "rsa_padding_mode:oaep"])
        .args(["-pkeyopt", &format!("rsa_oaep_md:{md}")])
        .args(["-pkeyopt", &format!("rsa_mgf1_md:{md}")])
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&out));
    std::fs::read(&out).expect("read openssl ciphertext")
}
