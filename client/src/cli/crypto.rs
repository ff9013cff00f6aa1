//! `hsmctl sign`, `verify` and `random`: the cryptographic calls.

use clap::Args;
use hsm_client::names::{self, name_of};
use hsm_client::v1::{MessageType, SignRequest, SigningAlgorithm, VerifyRequest};
use serde_json::json;

use super::args::{print_json, println, read_input, write_output};
use super::render::base64;
use super::{CliEnv, CliError, Verdict};

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Key UUID or alias/NAME.
    key: String,
    #[command(flatten)]
    alg: AlgorithmArgs,
    /// Message file (`-` for stdin): at most 4096 bytes, or the digest with --digest.
    #[arg(long = "in", value_name = "F")]
    input: String,
    /// Write the raw signature bytes to this file (`-` for stdout). RSA: modulus-sized;
    /// ECDSA: DER SEQUENCE { r, s }; Ed25519: 64 bytes.
    #[arg(long, value_name = "SIG")]
    out: String,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Key UUID or alias/NAME.
    key: String,
    #[command(flatten)]
    alg: AlgorithmArgs,
    /// Message file (`-` for stdin), or the digest with --digest.
    #[arg(long = "in", value_name = "F")]
    input: String,
    /// File with the raw signature bytes (`-` for stdin).
    #[arg(long, value_name = "SIG")]
    signature: String,
}

/// The algorithm and how the input is to be read, shared by sign and verify.
#[derive(Debug, Args)]
struct AlgorithmArgs {
    /// Signing algorithm: RSA_PKCS1_SHA_256/384/512, RSA_PSS_SHA_256/384/512,
    /// ECDSA_SHA_256/384, ED25519_SHA_512 (or ED25519); any case, `-` or `_`.
    #[arg(long, value_name = "A", value_parser = names::parse::<SigningAlgorithm>)]
    algorithm: SigningAlgorithm,
    /// The input is already a digest made with the algorithm's hash (message type
    /// DIGEST); its length must match the hash (32, 48 or 64 bytes).
    #[arg(long)]
    digest: bool,
}

impl AlgorithmArgs {
    fn message_type(&self) -> MessageType {
        if self.digest {
            MessageType::Digest
        } else {
            MessageType::Raw
        }
    }
}

/// Arguments of `random`.
#[derive(Debug, Args)]
pub struct RandomArgs {
    /// Number of bytes, 1..1024.
    #[arg(value_name = "N")]
    length: u32,
    /// Write the raw bytes to this file instead of printing hex.
    #[arg(long, value_name = "F")]
    out: Option<String>,
}

impl SignArgs {
    /// Signs and writes the signature; json also prints it in base64.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        if env.json() && self.out == "-" {
            return Err(CliError::usage(
                "--out - would mix the signature into the JSON output; name a file",
            ));
        }
        let req = SignRequest {
            key_id: self.key,
            algorithm: self.alg.algorithm as i32,
            message_type: self.alg.message_type() as i32,
            message: read_input("message", &self.input)?,
        };
        let resp = env
            .client
            .with_retries("Sign", || {
                let mut c = env.client.keys();
                let req = req.clone();
                async move { c.sign(req).await }
            })
            .await?;
        let resp = resp.into_inner();
        write_output("signature", &self.out, &resp.signature)?;
        if env.json() {
            print_json(&json!({
                "key_id": resp.key_id,
                "algorithm": name_of::<SigningAlgorithm>(resp.algorithm),
                "signature_base64": base64(&resp.signature),
                "out": self.out,
            }))?;
        }
        Ok(Verdict::Yes)
    }
}

impl VerifyArgs {
    /// Verifies; prints `valid` or `invalid` and answers with the verdict.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        if self.input == "-" && self.signature == "-" {
            return Err(CliError::usage(
                "--in and --signature cannot both be - (stdin)",
            ));
        }
        let req = VerifyRequest {
            key_id: self.key,
            algorithm: self.alg.algorithm as i32,
            message_type: self.alg.message_type() as i32,
            message: read_input("message", &self.input)?,
            signature: read_input("signature", &self.signature)?,
        };
        let resp = env
            .client
            .with_retries("Verify", || {
                let mut c = env.client.keys();
                let req = req.clone();
                async move { c.verify(req).await }
            })
            .await?;
        let resp = resp.into_inner();
        if env.json() {
            print_json(&json!({ "key_id": resp.key_id, "valid": resp.valid }))?;
        } else {
            println(if resp.valid { "valid" } else { "invalid" })?;
        }
        Ok(if resp.valid {
            Verdict::Yes
        } else {
            Verdict::No
        })
    }
}

impl RandomArgs {
    /// Prints hex, or writes raw bytes with --out.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let bytes = env.client.generate_random(self.length).await?;
        match (&self.out, env.json()) {
            (Some(out), json) => {
                write_output("random bytes", out, &bytes)?;
                if json {
                    print_json(&json!({ "length": bytes.len(), "out": out }))?;
                }
            }
            (None, true) => print_json(&json!({ "random_hex": hex::encode(&bytes) }))?,
            (None, false) => println(hex::encode(&bytes))?,
        }
        Ok(Verdict::Yes)
    }
}
