//! `hsmctl envelope encrypt|decrypt`: files of any size encrypted locally with
//! AES-256-GCM under one data key from hsmd (format in `hsm_client::envelope` and the
//! README), streaming in 64 KiB chunks with bounded memory, a progress line on a
//! terminal.
//!
//! The output is written to a temporary file beside `--out` and renamed only once the
//! whole input has been processed, so a refused (truncated, reordered, altered) envelope
//! leaves no partial plaintext behind.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hsm_client::envelope::{self, DEFAULT_CHUNK, EnvelopeError, Header};
use hsm_client::v1::KeySpec;
use serde_json::json;

use super::args::{print_json, println};
use super::{CliEnv, CliError, Verdict};

/// Envelope encryption of files.
#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Encrypt FILE locally under a fresh data key that K wraps.
    Encrypt(EncryptArgs),
    /// Decrypt an envelope file (hsmd unwraps its data key; the file names its key).
    Decrypt(DecryptArgs),
}

/// Arguments of `envelope encrypt`.
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// The AES_256 master key: UUID or alias/NAME.
    key: String,
    /// File to encrypt.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Envelope file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `envelope decrypt`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Envelope file to decrypt.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// File to write the plaintext to.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl EnvelopeCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            EnvelopeCommand::Encrypt(a) => a.run(env).await,
            EnvelopeCommand::Decrypt(a) => a.run(env).await,
        }
    }
}

impl EncryptArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let input = open(&self.input)?;
        let total = input.metadata().map(|m| m.len()).unwrap_or(0);
        let dk = env
            .client
            .generate_data_key(&self.key, KeySpec::Aes256, b"", true)
            .await?;
        let mut nonce_prefix = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce_prefix)
            .map_err(|_| CliError::usage("no system random number generator"))?;
        let header = Header {
            chunk_size: DEFAULT_CHUNK,
            nonce_prefix,
            blob: dk.blob.clone(),
        };
        let mut progress = Progress::new("encrypting", total);
        let bytes = write_atomically(&self.out, |w| {
            envelope::encrypt(
                &dk.plaintext,
                &header,
                &mut BufReader::with_capacity(1 << 16, input),
                w,
                |n| progress.update(n),
            )
        })?;
        progress.finish();
        report(env, "encrypted", &dk.key_id, bytes, &self.out)
    }
}

impl DecryptArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let file = open(&self.input)?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut input = BufReader::with_capacity(1 << 16, file);
        let (header, header_bytes) =
            Header::read(&mut input).map_err(|e| envelope_error(&self.input, e))?;
        let key = env
            .client
            .decrypt(None, None, header.blob.clone(), b"")
            .await?;
        let mut progress = Progress::new("decrypting", total);
        let bytes = write_atomically(&self.out, |w| {
            envelope::decrypt(&key.plaintext, &header, &header_bytes, &mut input, w, |n| {
                progress.update(n)
            })
        })?;
        progress.finish();
        report(env, "decrypted", &key.key_id, bytes, &self.out)
    }
}

fn report(
    env: &CliEnv,
    verb: &str,
    key_id: &str,
    bytes: u64,
    out: &Path,
) -> Result<Verdict, CliError> {
    if env.json() {
        print_json(&json!({ "key_id": key_id, "bytes": bytes, "out": out.display().to_string() }))?;
    } else {
        println(format!(
            "{verb} {bytes} bytes into {} (data key wrapped by {key_id})",
            out.display()
        ))?;
    }
    Ok(Verdict::Yes)
}

fn open(path: &Path) -> Result<File, CliError> {
    File::open(path).map_err(|e| CliError::io("cannot read", &path.display().to_string(), e))
}

fn envelope_error(path: &Path, e: EnvelopeError) -> CliError {
    match e {
        EnvelopeError::Io(io) => {
            CliError::io("cannot read or write", &path.display().to_string(), io)
        }
        other => CliError::Local {
            code: "INVALID_ARGUMENT",
            reason: "ENVELOPE_INVALID",
            message: other.to_string(),
        },
    }
}

/// Runs `f` on a temporary file beside `out`, renamed to `out` only if `f` succeeds.
fn write_atomically(
    out: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> Result<u64, EnvelopeError>,
) -> Result<u64, CliError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let shown = out.display().to_string();
    let file = File::create(&tmp).map_err(|e| CliError::io("cannot write", &shown, e))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    let result = f(&mut w).and_then(|n| {
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(n)
    });
    match result {
        Ok(n) => {
            std::fs::rename(&tmp, out).map_err(|e| CliError::io("cannot write", &shown, e))?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(envelope_error(out, e))
        }
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
struct Progress {
    verb: &'static str,
    total: u64,
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    fn new(verb: &'static str, total: u64) -> Self {
        Progress {
            verb,
            total,
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let pct = if self.total > 0 {
            (done as f64 * 100.0 / self.total as f64).min(100.0)
        } else {
            100.0
        };
        eprint!(
            "\r{} {:.1} / {:.1} MiB ({pct:.0}%)   ",
            self.verb,
            mib(done),
            mib(self.total)
        );
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}
