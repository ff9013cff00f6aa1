//! `hsmctl encrypt`, `decrypt` and `datakey`: small secrets encrypted by a key held in
//! the token, and data keys for envelope encryption.
//!
//! Plaintexts go only where `--out` says; data keys are printed only when asked for
//! (`--show-plaintext`) or written to a file of mode 0600 (`--plaintext-out`).

use std::io::Write;

use clap::Args;
use hsm_client::names::{self, name_of};
use hsm_client::v1::{EncryptionAlgorithm, KeySpec};
use serde_json::json;

use super::args::{print, print_json, read_input, write_output};
use super::render::base64;
use super::table::Table;
use super::{CliEnv, CliError, Verdict};

/// Arguments of `encrypt`.
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Key UUID or alias/NAME (AES_256, or RSA with --algorithm).
    key: String,
    /// Plaintext file (`-` for stdin): 1..4096 bytes for AES keys; for RSA keys at most
    /// the OAEP limit (190 bytes for RSA_2048 with SHA-256).
    #[arg(long = "in", value_name = "F")]
    input: String,
    /// Write the ciphertext to this file (`-` for stdout): the self-describing blob for
    /// AES keys, the modulus-sized OAEP ciphertext for RSA keys.
    #[arg(long, value_name = "F")]
    out: String,
    /// SYMMETRIC_DEFAULT (AES keys, the default), RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1.
    #[arg(long, value_name = "A", value_parser = names::parse::<EncryptionAlgorithm>)]
    algorithm: Option<EncryptionAlgorithm>,
    /// Additional authenticated data (AES keys): the same text must be given to decrypt.
    #[arg(long, value_name = "S")]
    aad: Option<String>,
}

/// Arguments of `decrypt`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Key UUID or alias/NAME; optional for AES blobs (they name their key), required
    /// for RSA ciphertexts.
    key: Option<String>,
    /// Ciphertext file (`-` for stdin).
    #[arg(long = "in", value_name = "F")]
    input: String,
    /// Write the plaintext to this file (`-` for stdout).
    #[arg(long, value_name = "F")]
    out: String,
    /// SYMMETRIC_DEFAULT (default), RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1.
    #[arg(long, value_name = "A", value_parser = names::parse::<EncryptionAlgorithm>)]
    algorithm: Option<EncryptionAlgorithm>,
    /// The additional authenticated data given to encrypt.
    #[arg(long, value_name = "S")]
    aad: Option<String>,
}

/// Arguments of `datakey`.
#[derive(Debug, Args)]
pub struct DataKeyArgs {
    /// The AES_256 master key: UUID or alias/NAME.
    key: String,
    /// Data key size: AES_256 (default) or AES_128.
    #[arg(long, value_name = "S", default_value = "AES_256", value_parser = names::parse::<KeySpec>)]
    spec: KeySpec,
    /// Ask only for the wrapped data key (GenerateDataKeyWithoutPlaintext).
    #[arg(long, conflicts_with_all = ["show_plaintext", "plaintext_out"])]
    no_plaintext: bool,
    /// Write the wrapped data key (blob) to this file instead of printing it in base64.
    #[arg(long, value_name = "F")]
    out: Option<String>,
    /// Print the plaintext data key in base64 (it is hidden otherwise).
    #[arg(long)]
    show_plaintext: bool,
    /// Write the raw plaintext data key to this file (created with mode 0600).
    #[arg(long, value_name = "F")]
    plaintext_out: Option<String>,
    /// Additional authenticated data the blob is bound to.
    #[arg(long, value_name = "S")]
    aad: Option<String>,
}

fn aad_bytes(aad: &Option<String>) -> &[u8] {
    aad.as_deref().map(str::as_bytes).unwrap_or_default()
}

impl EncryptArgs {
    /// Encrypts and writes the ciphertext; json also describes it.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        if env.json() && self.out == "-" {
            return Err(CliError::usage(
                "--out - would mix the ciphertext into the JSON output; name a file",
            ));
        }
        let plaintext = zeroize::Zeroizing::new(read_input("plaintext", &self.input)?);
        let resp = env
            .client
            .encrypt(&self.key, self.algorithm, &plaintext, aad_bytes(&self.aad))
            .await?;
        write_output("ciphertext", &self.out, &resp.ciphertext)?;
        if env.json() {
            print_json(&json!({
                "key_id": resp.key_id,
                "algorithm": name_of::<EncryptionAlgorithm>(resp.encryption_algorithm),
                "ciphertext_bytes": resp.ciphertext.len(),
                "out": self.out,
            }))?;
        }
        Ok(Verdict::Yes)
    }
}

impl DecryptArgs {
    /// Decrypts and writes the plaintext (json describes it, never prints it).
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        if env.json() && self.out == "-" {
            return Err(CliError::usage(
                "--out - would mix the plaintext into the JSON output; name a file",
            ));
        }
        let ciphertext = read_input("ciphertext", &self.input)?;
        let d = env
            .client
            .decrypt(
                self.key.as_deref(),
                self.algorithm,
                ciphertext,
                aad_bytes(&self.aad),
            )
            .await?;
        write_output("plaintext", &self.out, &d.plaintext)?;
        if env.json() {
            print_json(&json!({
                "key_id": d.key_id,
                "algorithm": name_of::<EncryptionAlgorithm>(d.algorithm),
                "plaintext_bytes": d.plaintext.len(),
                "out": self.out,
            }))?;
        }
        Ok(Verdict::Yes)
    }
}

impl DataKeyArgs {
    /// Generates a data key; prints the blob (or writes it) and the plaintext only when
    /// asked.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let dk = env
            .client
            .generate_data_key(
                &self.key,
                self.spec,
                aad_bytes(&self.aad),
                !self.no_plaintext,
            )
            .await?;
        if let Some(out) = &self.out {
            write_output("wrapped data key", out, &dk.blob)?;
        }
        if let Some(path) = &self.plaintext_out {
            write_secret(path, &dk.plaintext)?;
        }
        let blob = match &self.out {
            Some(out) => format!("written to {out}"),
            None => base64(&dk.blob),
        };
        let shown = self
            .show_plaintext
            .then(|| zeroize::Zeroizing::new(base64(&dk.plaintext)));
        if env.json() {
            let mut v = json!({
                "key_id": dk.key_id,
                "key_spec": name_of::<KeySpec>(dk.key_spec),
                "ciphertext_blob_base64": base64(&dk.blob),
                "out": self.out,
            });
            if let Some(p) = &shown {
                v["plaintext_base64"] = json!(p.as_str());
            }
            print_json(&v)?;
        } else {
            let mut t = Table::plain();
            t.row(["key_id".to_string(), dk.key_id.clone()]);
            t.row(["key_spec".to_string(), name_of::<KeySpec>(dk.key_spec)]);
            t.row(["ciphertext_blob".to_string(), blob]);
            let plain = match (&shown, &self.plaintext_out, self.no_plaintext) {
                (_, _, true) => "not requested (--no-plaintext)".to_string(),
                (Some(p), _, _) => p.to_string(),
                (None, Some(path), _) => format!("written to {path}"),
                (None, None, _) => "hidden (--show-plaintext or --plaintext-out F)".into(),
            };
            t.row(["plaintext".to_string(), plain]);
            print(&t.render())?;
        }
        Ok(Verdict::Yes)
    }
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret(path: &str, bytes: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::io("cannot write data key", path, e))?;
    f.write_all(bytes)
        .map_err(|e| CliError::io("cannot write data key", path, e))
}
