//! Bring-your-own-key helpers that use the `openssl` CLI only, exactly as the README's
//! recipe does: key generation, wrapping for import (RSA-OAEP with `openssl pkeyutl`,
//! AES key wrap with padding with `openssl enc -id-aes256-wrap-pad`), and AES key check
//! values (`openssl enc -aes-*-ecb`).

use std::path::{Path, PathBuf};
use std::process::Command;

use tonic::transport::Channel;

use crate::Instance;
use crate::tools::{run, write_file};
use crate::v1::{
    CreateKeyRequest, GetParametersForImportRequest, GetParametersForImportResponse,
    ImportKeyMaterialRequest, ImportKeyMaterialResponse, KeyOrigin, KeySpec, KeyUsage,
    WrappingAlgorithm, key_service_client::KeyServiceClient,
};

/// A private key made by openssl: PKCS#8 DER, and its public half (PEM and DER).
pub struct OpensslKey {
    pub pkcs8_der: PathBuf,
    pub public_pem: PathBuf,
    pub public_der: Vec<u8>,
}

/// `openssl genpkey` for an asymmetric spec, then `openssl pkcs8 -topk8` to PKCS#8 DER
/// (`genpkey -outform DER` writes the traditional PKCS#1/SEC1 forms), plus the public key.
pub fn openssl_genpkey(dir: &Path, name: &str, spec: KeySpec) -> OpensslKey {
    let pem = dir.join(format!("{name}.pem"));
    let pkcs8_der = dir.join(format!("{name}.p8.der"));
    let mut cmd = Command::new("openssl");
    cmd.arg("genpkey");
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let bits = match spec {
                KeySpec::Rsa2048 => 2048,
                KeySpec::Rsa3072 => 3072,
                _ => 4096,
            };
            cmd.args(["-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}"));
        }
        KeySpec::EcP256 => {
            cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        KeySpec::EcP384 => {
            cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]);
        }
        KeySpec::Ed25519 => {
            cmd.args(["-algorithm", "ED25519"]);
        }
        other => panic!("{other:?} is not an asymmetric spec"),
    }
    run(cmd.arg("-out").arg(&pem));
    run(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&pem)
        .args(["-outform", "DER", "-out"])
        .arg(&pkcs8_der));
    let public_pem = dir.join(format!("{name}.pub.pem"));
    run(Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-in"])
        .arg(&pkcs8_der)
        .args(["-pubout", "-out"])
        .arg(&public_pem));
    let public_der_path = dir.join(format!("{name}.pub.der"));
    run(Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-in"])
        .arg(&pkcs8_der)
        .args(["-pubout", "-outform", "DER", "-out"])
        .arg(&public_der_path));
    let public_der = std::fs::read(&public_der_path).expect("read public DER");
    OpensslKey {
        pkcs8_der,
        public_pem,
        public_der,
    }
}

/// `n` random bytes from `openssl rand`.
pub fn openssl_rand(dir: &Path, name: &str, n: usize) -> Vec<u8> {
    let path = dir.join(name);
    run(Command::new("openssl")
        .args(["rand", "-out"])
        .arg(&path)
        .arg(n.to_string()));
    std::fs::read(&path).expect("read random bytes")
}

fn oaep_encrypt(dir: &Path, wrapping_pem: &Path, md: &str, input: &Path, tag: &str) -> Vec<u8> {
    let out = dir.join(format!("{tag}.oaep"));
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(wrapping_pem)
        .args(["-pkeyopt", "rsa_padding_mode:oaep"])
        .args(["-pkeyopt", &format!("rsa_oaep_md:{md}")])
        .args(["-pkeyopt", &format!("rsa_mgf1_md:{md}")])
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(&out));
    std::fs::read(&out).expect("read OAEP output")
}

/// AES key wrap with padding (RFC 5649) of the file `input` under `kek` (32 bytes).
pub fn openssl_kwp(dir: &Path, kek: &[u8], input: &Path, tag: &str) -> Vec<u8> {
    let out = dir.join(format!("{tag}.kwp"));
    run(Command::new("openssl")
        .args(["enc", "-id-aes256-wrap-pad", "-K", &hex::encode(kek)])
        .args(["-iv", "A65959A6", "-in"])
        .arg(input)
        .arg("-out")
        .arg(&out));
    std::fs::read(&out).expect("read key-wrap output")
}

/// Wraps the material in the file `material` for import with `alg`, under the wrapping
/// public key `wrapping_pem`, with the openssl CLI only.
pub fn openssl_wrap(
    dir: &Path,
    wrapping_pem: &Path,
    alg: WrappingAlgorithm,
    material: &Path,
) -> Vec<u8> {
    let tag = format!("{}-{}", alg.as_str_name(), rand_tag());
    match alg {
        WrappingAlgorithm::RsaesOaepSha1 => oaep_encrypt(dir, wrapping_pem, "sha1", material, &tag),
        WrappingAlgorithm::RsaesOaepSha256 => {
            oaep_encrypt(dir, wrapping_pem, "sha256", material, &tag)
        }
        WrappingAlgorithm::RsaAesKeyWrapSha1 | WrappingAlgorithm::RsaAesKeyWrapSha256 => {
            let md = if alg == WrappingAlgorithm::RsaAesKeyWrapSha1 {
                "sha1"
            } else {
                "sha256"
            };
            let ephemeral = openssl_rand(dir, &format!("{tag}.ephemeral"), 32);
            let eph_path = dir.join(format!("{tag}.ephemeral"));
            let mut out = oaep_encrypt(dir, wrapping_pem, md, &eph_path, &tag);
            out.extend(openssl_kwp(dir, &ephemeral, material, &tag));
            out
        }
        WrappingAlgorithm::Unspecified => panic!("pick a wrapping algorithm"),
    }
}

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// The AES key check value as openssl computes it from the key bytes: the first 3 bytes
/// of AES-ECB of a zero block, upper-case hex.
pub fn openssl_kcv(dir: &Path, key: &[u8]) -> String {
    let zeros = write_file(dir, "kcv-zeros", &[0u8; 16]);
    let cipher = match key.len() {
        16 => "-aes-128-ecb",
        32 => "-aes-256-ecb",
        n => panic!("{n}-byte AES key"),
    };
    let out = dir.join("kcv.out");
    run(Command::new("openssl")
        .args(["enc", cipher, "-nopad", "-K", &hex::encode(key), "-in"])
        .arg(&zeros)
        .arg("-out")
        .arg(&out));
    let block = std::fs::read(&out).expect("read ECB output");
    hex::encode_upper(&block[..3])
}

/// Creates an EXTERNAL key and returns its id.
pub async fn create_external(
    keys: &mut KeyServiceClient<Channel>,
    spec: KeySpec,
    usage: KeyUsage,
) -> String {
    let req = CreateKeyRequest {
        spec: spec as i32,
        usage: usage as i32,
        origin: KeyOrigin::External as i32,
        ..Default::default()
    };
    crate::keys::create(keys, req, &format!("EXTERNAL {spec:?}")).await
}

/// GetParametersForImport, which must succeed; also writes the wrapping public key PEM
/// to `dir/<key>.wrap.pem` and returns its path.
pub async fn parameters(
    keys: &mut KeyServiceClient<Channel>,
    dir: &Path,
    key: &str,
    alg: WrappingAlgorithm,
) -> (GetParametersForImportResponse, PathBuf) {
    let p = keys
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: key.to_string(),
            wrapping_algorithm: alg as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "GetParametersForImport {alg:?}: {}",
                crate::status::describe(&s)
            )
        })
        .into_inner();
    let pem = write_file(
        dir,
        &format!("{key}.{}.wrap.pem", rand_tag()),
        p.public_key_pem.as_bytes(),
    );
    (p, pem)
}

/// ImportKeyMaterial as the dev admin, with no public key and no valid_to; the result
/// as it came, for the test to expect or refuse.
pub async fn import_material(
    d: &Instance,
    key: &str,
    token: &[u8],
    wrapped: Vec<u8>,
) -> Result<tonic::Response<ImportKeyMaterialResponse>, tonic::Status> {
    import_material_on(&mut d.keys(), key, token, wrapped).await
}

/// [`import_material`] through this client (a replica of a cluster).
pub async fn import_material_on(
    keys: &mut KeyServiceClient<Channel>,
    key: &str,
    token: &[u8],
    wrapped: Vec<u8>,
) -> Result<tonic::Response<ImportKeyMaterialResponse>, tonic::Status> {
    keys.import_key_material(ImportKeyMaterialRequest {
        key_id: key.to_string(),
        import_token: token.to_vec(),
        encrypted_key_material: wrapped,
        ..Default::default()
    })
    .await
}
