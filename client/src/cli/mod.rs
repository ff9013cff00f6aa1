//! The `hsmctl` command line: global flags, the command tree, and dispatch.
//!
//! One file per command family (`key`, `alias`, `crypto`, `encrypt`, `envelope`, `csr`,
//! `import`, `token`, `audit`, with `report` and its shared counting in `tally`, and
//! `policy` and `image` for container image signing); each turns its arguments into calls
//! on [`hsm_client::Client`] and prints a table (for people) or JSON (`-o json`, for
//! programs).

mod alias;
mod args;
mod audit;
mod bench;
mod crypto;
mod csr;
mod encrypt;
mod envelope;
mod error;
mod export;
mod image;
mod import;
mod key;
mod policy;
mod render;
mod report;
mod table;
mod tally;
mod token;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use hsm_client::{Client, Profile, RetryNotice};

pub use error::CliError;

/// Command-line client for hsmd, the PKCS#11 key-management, signing and encryption daemon.
///
/// Connects with the client profile written by `hsmd dev` (or the one named by
/// --profile / $HSMCTL_PROFILE). Keys are named by UUID or `alias/NAME`.
///
/// Several replicas: a profile with `endpoints = ["https://A:PORT", "https://B:PORT"]`
/// starts on the first; a call that cannot connect or gets UNAVAILABLE is retried on the
/// next (with the --max-retries backoff; CreateKey carries an idempotency token, so it
/// never makes a second key). --endpoint talks to one replica only.
///
/// Container images: `policy` manages the signature policy of each registry namespace
/// (which images hsmd signs, with which key, and when); `image` signs images and verifies
/// their signatures.
///
/// Exit status: 0 success; 1 a negative answer (`verify`: invalid signature,
/// `image verify`: image unsigned or no valid signature, `audit verify` and
/// `audit report`: broken chain); 2 any error, printed on stderr as
/// `error: <CODE> <REASON>: <message>`.
#[derive(Debug, Parser)]
#[command(name = "hsmctl", version, propagate_version = true)]
pub struct Cli {
    /// Client profile (TOML: endpoint or endpoints, server_name, ca_cert, client_cert,
    /// client_key). Default: $XDG_DATA_HOME/hsmd/dev/client.toml, else
    /// ~/.local/share/hsmd/dev/client.toml.
    #[arg(
        long,
        global = true,
        env = "HSMCTL_PROFILE",
        value_name = "FILE",
        help_heading = "Global options"
    )]
    profile: Option<PathBuf>,

    /// Talk to this one hsmd (one replica of a cluster) instead of the profile's
    /// endpoint(s): no fail-over. The TLS settings (server_name, CA, client certificate)
    /// still come from the profile.
    #[arg(
        long,
        global = true,
        value_name = "https://HOST:PORT",
        help_heading = "Global options"
    )]
    endpoint: Option<String>,

    /// Output format: aligned tables for people, or JSON (one object, or one object per
    /// line for streams) for programs.
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Global options"
    )]
    output: Output,

    /// Retries of a call refused with RESOURCE_EXHAUSTED (rate limit) or UNAVAILABLE,
    /// or whose connection failed, with exponential backoff and jitter (default: the
    /// profile's [retry] table, else 5; 0 = never retry). With several endpoints, a retry
    /// after UNAVAILABLE or a connection failure goes to the next one. Other errors are
    /// never retried.
    #[arg(long, global = true, value_name = "N", help_heading = "Global options")]
    max_retries: Option<u32>,

    /// Print each retry (call, status, reason, delay, and the endpoint it moves to) on
    /// stderr.
    #[arg(short, long, global = true, help_heading = "Global options")]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

/// Output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON objects.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect and manage the lifecycle of keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Create, move, delete and list aliases (`alias/NAME`).
    #[command(subcommand)]
    Alias(alias::AliasCommand),
    /// Sign a message or digest; write the raw signature to a file.
    Sign(crypto::SignArgs),
    /// Verify a signature: prints `valid` (exit 0) or `invalid` (exit 1).
    Verify(crypto::VerifyArgs),
    /// Random bytes from the token's RNG, printed in hex.
    Random(crypto::RandomArgs),
    /// Encrypt a small secret (at most 4 KiB) with an AES_256 key in the token (or with
    /// an RSA key's public half); write the ciphertext to a file.
    Encrypt(encrypt::EncryptArgs),
    /// Decrypt a ciphertext blob (AES keys: no key id needed) or an RSA-OAEP ciphertext.
    Decrypt(encrypt::DecryptArgs),
    /// Generate a data key: wrapped under an AES_256 key, and in plaintext if asked.
    Datakey(encrypt::DataKeyArgs),
    /// Encrypt or decrypt files of any size locally under a data key from hsmd.
    #[command(subcommand)]
    Envelope(envelope::EnvelopeCommand),
    /// Bring your own key: import key material into an EXTERNAL key (`key create
    /// --origin external`), wrapped locally under a wrapping key from hsmd.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Make a PKCS#10 certificate signing request for a key, signed inside the token.
    Csr(csr::CsrArgs),
    /// Import, fetch and self-sign the certificates of keys.
    #[command(subcommand)]
    Cert(csr::CertCommand),
    /// What token hsmd runs on and what it offers there.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Query, summarize, review (HTML report) and verify the audit log; export the audit
    /// public key.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Signature policies of registry namespaces: which images hsmd signs, with which
    /// key, and when (on push, on request, on a schedule).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Sign container images (cosign format, keys in the token) and verify their
    /// signatures (`image verify` exits 1 when an image is unsigned or no signature is
    /// valid).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Load-test a running daemon: ops/s and p50/p90/p99/max latency (exit 1 on errors).
    Bench(bench::BenchArgs),
}

/// What a successful command concluded; decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0.
    Yes,
    /// A negative answer that is not an error (invalid signature, broken chain): exit 1.
    No,
}

impl From<Verdict> for ExitCode {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Yes => ExitCode::SUCCESS,
            Verdict::No => ExitCode::from(1),
        }
    }
}

/// What every command gets: the connection and the output format.
pub struct CliEnv {
    client: Client,
    output: Output,
    /// The endpoint(s) used (the profile's, or --endpoint), for reports that say where
    /// they came from.
    endpoint: String,
}

impl CliEnv {
    fn json(&self) -> bool {
        self.output == Output::Json
    }
}

impl Cli {
    /// Applies the global options that override the profile: --max-retries, and
    /// --endpoint (one endpoint instead of the profile's list; TLS settings stay).
    fn adjust(&self, profile: &mut Profile) {
        if let Some(n) = self.max_retries {
            profile.retry.max_attempts = n.saturating_add(1);
        }
        if let Some(endpoint) = &self.endpoint {
            profile.set_endpoint(endpoint.clone());
        }
    }

    /// Loads the profile, connects, and runs the command (offline audit verification
    /// and `import wrap` need neither; a `policy` command refused locally, such as a
    /// delete without --confirm, makes no connection).
    pub async fn run(self) -> Result<Verdict, CliError> {
        if let Command::Policy(p) = &self.command {
            p.check()?;
        }
        if let Command::Audit(audit::AuditCommand::Verify(v)) = &self.command
            && v.offline()
        {
            return v.run_offline(self.output);
        }
        if let Command::Audit(audit::AuditCommand::Query(q)) = &self.command
            && q.offline()
        {
            return q.run_offline();
        }
        if let Command::Import(import::ImportCommand::Wrap(w)) = &self.command {
            return w.run_offline(self.output);
        }
        let path = match &self.profile {
            Some(p) => p.clone(),
            None => Profile::default_path()?,
        };
        let mut profile = Profile::load(&path)?;
        self.adjust(&mut profile);
        if let Command::Audit(audit::AuditCommand::Verify(_)) = &self.command {
            return audit::verify_each(&profile, self.output == Output::Json).await;
        }
        let mut client = Client::connect(&profile).await?;
        if self.verbose {
            client = client.with_retry_observer(Arc::new(|n: &RetryNotice| {
                eprintln!("{}", retry_line(n));
            }));
        }
        let env = CliEnv {
            client,
            output: self.output,
            endpoint: profile.endpoint_list().join(", "),
        };
        match self.command {
            Command::Key(cmd) => cmd.run(&env).await,
            Command::Alias(cmd) => cmd.run(&env).await,
            Command::Sign(a) => a.run(&env).await,
            Command::Verify(a) => a.run(&env).await,
            Command::Random(a) => a.run(&env).await,
            Command::Encrypt(a) => a.run(&env).await,
            Command::Decrypt(a) => a.run(&env).await,
            Command::Datakey(a) => a.run(&env).await,
            Command::Envelope(cmd) => cmd.run(&env).await,
            Command::Import(cmd) => cmd.run(&env).await,
            Command::Csr(a) => a.run(&env).await,
            Command::Cert(cmd) => cmd.run(&env).await,
            Command::Token(cmd) => cmd.run(&env).await,
            Command::Audit(cmd) => cmd.run(&env).await,
            Command::Policy(cmd) => cmd.run(&env).await,
            Command::Image(cmd) => cmd.run(&env).await,
            Command::Bench(a) => a.run(&env, &profile).await,
        }
    }
}

/// The line `hsmctl -v` prints before a retry.
fn retry_line(n: &RetryNotice) -> String {
    let mut line = format!(
        "retry {} of {} after {} {}: waiting {} ms",
        n.retry,
        n.call,
        hsm_client::code_name(n.code),
        if n.reason.is_empty() { "-" } else { &n.reason },
        n.delay.as_millis()
    );
    if let Some(to) = &n.moved_to {
        line.push_str(", then trying ");
        line.push_str(to);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_enum_names_and_global_flags() {
        let cli = Cli::try_parse_from([
            "hsmctl",
            "key",
            "create",
            "--spec",
            "rsa-2048",
            "--usage",
            "SIGN_VERIFY",
            "-o",
            "json",
            "--tag",
            "a=b",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        let bad = Cli::try_parse_from(["hsmctl", "key", "create", "--spec", "rsa", "--usage", "x"]);
        assert!(bad.is_err());
        let sign = Cli::try_parse_from([
            "hsmctl",
            "sign",
            "alias/k",
            "--algorithm",
            "ed25519",
            "--in",
            "-",
            "--out",
            "s",
        ]);
        assert!(sign.is_ok());
        for args in [
            &["hsmctl", "decrypt", "--in", "c", "--out", "p"][..],
            &[
                "hsmctl",
                "decrypt",
                "k",
                "--in",
                "c",
                "--out",
                "p",
                "--algorithm",
                "rsaes-oaep-sha-256",
            ],
            &[
                "hsmctl", "encrypt", "k", "--in", "p", "--out", "c", "--aad", "env",
            ],
            &[
                "hsmctl",
                "datakey",
                "k",
                "--spec",
                "aes-128",
                "--no-plaintext",
            ],
            &[
                "hsmctl", "envelope", "encrypt", "k", "--in", "f", "--out", "e",
            ],
            &["hsmctl", "envelope", "decrypt", "--in", "e", "--out", "f"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        let both = Cli::try_parse_from([
            "hsmctl",
            "datakey",
            "k",
            "--no-plaintext",
            "--show-plaintext",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn import_commands_parse() {
        let parses = |line: &str| Cli::try_parse_from(line.split_whitespace()).is_ok();
        for good in [
            "hsmctl key create --spec aes-128 --usage encrypt-decrypt --origin external",
            "hsmctl key delete-material alias/k",
            "hsmctl import params k --out-dir d",
            "hsmctl import params k --wrapping-algorithm RSA_AES_KEY_WRAP_SHA_256 \
             --wrapping-key-spec RSA_3072 --out-dir d",
            "hsmctl import material k --token t --material m --public-key p --valid-to +1h",
            "hsmctl import material k --token t --material m --valid-to 2030-01-31T12:00:00Z",
            "hsmctl import wrap --public-key w.pem --algorithm rsaes-oaep-sha-1 --in k --out m",
            "hsmctl import key k --in k.pem --valid-to +30m -o json",
        ] {
            assert!(parses(good), "{good}");
        }
        for bad in [
            "hsmctl key create --spec rsa-2048 --usage sign-verify --origin elsewhere",
            "hsmctl import params k --wrapping-key-spec EC_P256 --out-dir d",
            "hsmctl import params k --wrapping-algorithm unspecified --out-dir d",
            "hsmctl import params k",
            "hsmctl import wrap --public-key w --in k --out m",
            "hsmctl import material k --token t --material m --valid-to 1h",
            "hsmctl import key k",
        ] {
            assert!(!parses(bad), "{bad}");
        }
    }

    #[test]
    fn audit_report_and_stats_take_a_range() {
        let parses = |line: &str| Cli::try_parse_from(line.split_whitespace()).is_ok();
        for good in [
            "hsmctl audit report --since 7d --out report.html",
            "hsmctl audit report --since 2025-01-01T00:00:00Z --until 2025-01-08T00:00:00Z",
            "hsmctl -o json audit report --since 24h --until 1h --top 3",
            "hsmctl audit stats --since 7d --until 2025-01-08T00:00:00Z",
        ] {
            assert!(parses(good), "{good}");
        }
        assert!(!parses("hsmctl audit report --top many"));
    }

    #[test]
    fn key_create_origin_defaults_to_hsm() {
        let origin = |extra: &[&str]| {
            let line = "hsmctl key create --spec aes-256 --usage encrypt-decrypt";
            let args = line.split_whitespace().chain(extra.iter().copied());
            match Cli::try_parse_from(args).unwrap().command {
                Command::Key(key::KeyCommand::Create(c)) => c.origin(),
                other => panic!("{other:?}"),
            }
        };
        use hsm_client::v1::KeyOrigin;
        assert_eq!(origin(&[]), KeyOrigin::Hsm);
        assert_eq!(origin(&["--origin", "external"]), KeyOrigin::External);
        assert_eq!(origin(&["--origin", "HSM"]), KeyOrigin::Hsm);
    }

    #[test]
    fn endpoint_is_a_global_option() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        let cli = parse("hsmctl --endpoint https://b:8443 random 8").unwrap();
        assert_eq!(cli.endpoint.as_deref(), Some("https://b:8443"));
        let cli = parse("hsmctl key list --endpoint https://c:8443 -o json").unwrap();
        assert_eq!(cli.endpoint.as_deref(), Some("https://c:8443"));
        assert_eq!(parse("hsmctl random 8").unwrap().endpoint, None);
        assert!(parse("hsmctl --endpoint").is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--endpoint <https://HOST:PORT>"), "{help}");
    }

    #[test]
    fn endpoint_overrides_the_profiles_list() {
        let cli =
            Cli::try_parse_from(["hsmctl", "--endpoint", "https://b:8443", "random", "8"]).unwrap();
        let text = r#"
            endpoints = ["https://a:8443", "https://b:8443", "https://c:8443"]
            server_name = "localhost"
            ca_cert = "ca.pem"
            client_cert = "c.pem"
            client_key = "k.pem"
        "#;
        let loaded = Profile::parse(text, std::path::Path::new("/d/p.toml")).unwrap();
        assert_eq!(loaded.endpoint_list().len(), 3);
        let mut profile = loaded.clone();
        cli.adjust(&mut profile);
        assert_eq!(profile.endpoint_list(), ["https://b:8443"]);
        assert_eq!(profile.server_name, "localhost", "TLS settings stay");
        assert_eq!(profile.ca_cert, loaded.ca_cert);
        // Without --endpoint the list stays.
        let cli = Cli::try_parse_from(["hsmctl", "random", "8"]).unwrap();
        let mut profile = loaded.clone();
        cli.adjust(&mut profile);
        assert_eq!(profile, loaded);
    }

    #[test]
    fn verbose_retry_lines_name_the_endpoint_moved_to() {
        let mut n = RetryNotice {
            call: "Sign",
            retry: 1,
            code: tonic::Code::ResourceExhausted,
            reason: "RATE_LIMITED".into(),
            delay: std::time::Duration::from_millis(40),
            moved_to: None,
        };
        assert_eq!(
            retry_line(&n),
            "retry 1 of Sign after RESOURCE_EXHAUSTED RATE_LIMITED: waiting 40 ms"
        );
        n.code = tonic::Code::Unavailable;
        n.reason.clear();
        n.moved_to = Some("https://b:8443".into());
        assert_eq!(
            retry_line(&n),
            "retry 1 of Sign after UNAVAILABLE -: waiting 40 ms, then trying https://b:8443"
        );
    }
}
