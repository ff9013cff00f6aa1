//! `hsmctl image ...`: sign container images of the registry hsmd is configured with
//! (one image, or every image a namespace's policy covers) in cosign's key-based
//! format, and verify their signatures.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use hsm_client::ClientError;
use hsm_client::names::name_of;
use hsm_client::v1::{
    ImageSignature, ImageSignatureStatus, SignImageResponse, SignNamespaceProgress,
    VerifyImageResponse,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tonic::Streaming;

use super::args::{print, print_json, println};
use super::table::{Table, cell, or_dash};
use super::{CliEnv, CliError, Verdict};

/// Image commands. REF is `HOST:PORT/NS/REPO:TAG` or `HOST:PORT/NS/REPO@sha256:HEX`
/// (the host may be left out for the configured registry).
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Sign one image with its namespace's policy key (or --key). A digest already
    /// signed by that key gets no second signature. Prints the repository, digest, key
    /// and whether a signature was added.
    Sign {
        /// The image, by tag or by digest.
        #[arg(value_name = "REF")]
        reference: String,
        /// Sign with this key (UUID or alias/NAME) instead of the policy's.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Sign every image of a namespace that its policy covers and has not signed yet.
    /// Shows a progress bar on a terminal, one line per image otherwise (json: one
    /// object per image, then {"summary": {...}}), and ends with a summary: signed N,
    /// already signed M, failed K. Exit 2 if any image could not be signed.
    SignNamespace {
        /// Registry namespace.
        #[arg(value_name = "NS")]
        namespace: String,
    },
    /// Verify an image's signatures against its namespace's policy key (or --key):
    /// prints the status and each signature (key, valid, reason, policy). Exit 0 when
    /// the image is signed (IMAGE_SIGNED), 1 when it is unsigned (IMAGE_UNSIGNED) or
    /// no signature is valid (IMAGE_SIGNATURE_INVALID), 2 on errors.
    Verify {
        /// The image, by tag or by digest.
        #[arg(value_name = "REF")]
        reference: String,
        /// Check against this key (UUID or alias/NAME) instead of the policy's.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
}

impl ImageCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            ImageCommand::Sign { reference, key } => {
                let resp = env.client.sign_image(&reference, key.as_deref()).await?;
                if env.json() {
                    print_json(&signed_json(&resp))?;
                } else {
                    print(&signed_table(&resp))?;
                }
                Ok(Verdict::Yes)
            }
            ImageCommand::SignNamespace { namespace } => sign_namespace(env, &namespace).await,
            ImageCommand::Verify { reference, key } => {
                let resp = env.client.verify_image(&reference, key.as_deref()).await?;
                let verdict = verdict(resp.status)?;
                if env.json() {
                    print_json(&verified_json(&resp))?;
                } else {
                    print(&verified_text(&resp))?;
                }
                Ok(verdict)
            }
        }
    }
}

/// `yes` or `no`.
fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A SignImage answer as a JSON object.
fn signed_json(r: &SignImageResponse) -> Value {
    json!({
        "repository": r.repository,
        "digest": r.digest,
        "key_id": r.key_id,
        "algorithm": r.algorithm,
        "signed": r.signed,
        "policy": r.policy,
    })
}

/// A SignImage answer as `field  value` lines.
fn signed_table(r: &SignImageResponse) -> String {
    let signed = if r.signed {
        "yes"
    } else {
        "no (already signed by this key)"
    };
    let mut t = Table::plain();
    t.row(["repository".into(), or_dash(cell(&r.repository))]);
    t.row(["digest".into(), or_dash(cell(&r.digest))]);
    t.row(["signed", signed]);
    t.row(["key_id".into(), or_dash(cell(&r.key_id))]);
    t.row(["algorithm".into(), or_dash(cell(&r.algorithm))]);
    t.row(["policy".into(), or_dash(cell(&r.policy))]);
    t.render()
}

/// What a VerifyImage status means for the exit status: signed is 0, unsigned or
/// invalid is 1; a status this client does not know is an error.
fn verdict(status: i32) -> Result<Verdict, CliError> {
    match ImageSignatureStatus::try_from(status) {
        Ok(ImageSignatureStatus::ImageSigned) => Ok(Verdict::Yes),
        Ok(ImageSignatureStatus::ImageUnsigned | ImageSignatureStatus::ImageSignatureInvalid) => {
            Ok(Verdict::No)
        }
        _ => Err(CliError::Local {
            code: "INTERNAL",
            reason: "MALFORMED_RESPONSE",
            message: format!(
                "VerifyImage answered with status {}",
                name_of::<ImageSignatureStatus>(status)
            ),
        }),
    }
}

/// One checked signature as a JSON object.
fn signature_json(s: &ImageSignature) -> Value {
    json!({
        "key_id": s.key_id,
        "valid": s.valid,
        "reason": s.reason,
        "policy": s.policy,
        "payload_digest": s.payload_digest,
    })
}

/// A VerifyImage answer as a JSON object.
fn verified_json(r: &VerifyImageResponse) -> Value {
    json!({
        "repository": r.repository,
        "digest": r.digest,
        "status": name_of::<ImageSignatureStatus>(r.status),
        "signatures": r.signatures.iter().map(signature_json).collect::<Vec<_>>(),
    })
}

/// A VerifyImage answer for people: the image and its status, then one line per
/// signature.
fn verified_text(r: &VerifyImageResponse) -> String {
    let mut about = Table::plain();
    about.row(["repository".into(), or_dash(cell(&r.repository))]);
    about.row(["digest".into(), or_dash(cell(&r.digest))]);
    about.row(["status".into(), name_of::<ImageSignatureStatus>(r.status)]);
    if r.signatures.is_empty() {
        return format!("{}\nsignatures: none\n", about.render());
    }
    let mut sigs = Table::new(&["KEY ID", "VALID", "POLICY", "REASON"]);
    for s in &r.signatures {
        sigs.row([
            or_dash(cell(&s.key_id)),
            yes_no(s.valid).to_string(),
            or_dash(cell(&s.policy)),
            or_dash(cell(&s.reason)),
        ]);
    }
    format!("{}\n{}", about.render(), sigs.render())
}

/// Counts of a `sign-namespace` run, from its progress messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Images the policy covers, as the server last said.
    total: u32,
    /// Signed by this run.
    signed: u32,
    /// Signed before this run.
    already_signed: u32,
    /// Could not be signed.
    failed: u32,
}

impl Tally {
    /// Counts one progress message.
    fn add(&mut self, p: &SignNamespaceProgress) {
        self.total = self.total.max(p.total);
        if !p.error.is_empty() {
            self.failed += 1;
        } else if p.signed {
            self.signed += 1;
        } else {
            self.already_signed += 1;
        }
    }

    /// Images reported so far.
    fn seen(&self) -> u32 {
        self.signed + self.already_signed + self.failed
    }

    /// The summary for people.
    fn line(&self) -> String {
        format!(
            "signed {}, already signed {}, failed {}",
            self.signed, self.already_signed, self.failed
        )
    }

    /// The summary for programs: the last JSON line of `-o json`.
    fn json(&self, namespace: &str) -> Value {
        json!({ "summary": {
            "namespace": namespace,
            "total": self.total,
            "signed": self.signed,
            "already_signed": self.already_signed,
            "failed": self.failed,
        }})
    }
}

/// The image of a progress message: `REPO:TAG@DIGEST`, without what is empty.
fn image_name(p: &SignNamespaceProgress) -> String {
    let mut name = cell(&p.repository);
    if !p.tag.is_empty() {
        name = format!("{name}:{}", cell(&p.tag));
    }
    if !p.digest.is_empty() {
        name = format!("{name}@{}", cell(&p.digest));
    }
    name
}

/// One progress message as a line: `[done/total] signed|already signed|failed IMAGE`,
/// with the error of a failure.
fn progress_line(p: &SignNamespaceProgress) -> String {
    let head = format!("[{}/{}]", p.done, p.total);
    if !p.error.is_empty() {
        return format!("{head} failed {}: {}", image_name(p), cell(&p.error));
    }
    let what = if p.signed { "signed" } else { "already signed" };
    format!("{head} {what} {}", image_name(p))
}

/// One progress message as a JSON object.
fn progress_json(p: &SignNamespaceProgress) -> Value {
    json!({
        "total": p.total,
        "done": p.done,
        "repository": p.repository,
        "tag": p.tag,
        "digest": p.digest,
        "signed": p.signed,
        "error": p.error,
    })
}

/// The progress display before the first message: the namespace is being listed.
const SPINNER: &str = "{spinner} [{elapsed_precise}] {wide_msg}";

/// The progress display from the first message on: images done of the total, and the
/// last image (cut to the terminal's width).
const BAR: &str = "[{elapsed_precise}] [{bar:30}] {pos}/{len} {wide_msg}";

/// A progress style from a template, with an ASCII bar (the plain default if the
/// template is refused).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Where `sign-namespace` shows its progress.
enum Display {
    /// One JSON object per message on stdout.
    Json,
    /// A progress bar on stderr; failures printed above it.
    Bar(ProgressBar),
    /// One line per message on stdout.
    Lines,
}

impl Display {
    /// JSON with `-o json`; a bar when stdout and stderr are both terminals; lines
    /// otherwise (a pipe or a file gets a record of every image).
    fn new(env: &CliEnv, namespace: &str) -> Display {
        if env.json() {
            return Display::Json;
        }
        if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
            return Display::Lines;
        }
        // A spinner until the first message says how many images there are.
        let bar = ProgressBar::new_spinner().with_style(style(SPINNER));
        bar.set_message(format!("listing the images of {}", cell(namespace)));
        bar.enable_steady_tick(Duration::from_millis(200));
        Display::Bar(bar)
    }

    /// Shows one progress message.
    fn show(&self, p: &SignNamespaceProgress) -> Result<(), CliError> {
        match self {
            Display::Json => print_json(&progress_json(p)),
            Display::Lines => println(progress_line(p)),
            Display::Bar(bar) => {
                if bar.length().is_none() {
                    bar.set_style(style(BAR));
                }
                bar.set_length(u64::from(p.total.max(p.done)));
                bar.set_position(u64::from(p.done));
                bar.set_message(image_name(p));
                if !p.error.is_empty() {
                    bar.println(progress_line(p));
                }
                Ok(())
            }
        }
    }

    /// Takes the bar away, if any.
    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Reads the progress stream to its end, counting and showing every message.
async fn drain(
    stream: &mut Streaming<SignNamespaceProgress>,
    display: &Display,
    tally: &mut Tally,
) -> Result<(), CliError> {
    while let Some(p) = stream.message().await.map_err(ClientError::from)? {
        tally.add(&p);
        display.show(&p)?;
    }
    Ok(())
}

/// `image sign-namespace`: streams the progress, prints the summary (also after a
/// broken stream), and fails if the stream broke or any image could not be signed.
async fn sign_namespace(env: &CliEnv, namespace: &str) -> Result<Verdict, CliError> {
    let mut stream = env.client.sign_namespace(namespace).await?;
    let display = Display::new(env, namespace);
    let mut tally = Tally::default();
    let drained = drain(&mut stream, &display, &mut tally).await;
    display.finish();
    if env.json() {
        print_json(&tally.json(namespace))?;
    } else {
        println(tally.line())?;
    }
    drained?;
    if tally.failed > 0 {
        return Err(CliError::Local {
            code: "FAILED_PRECONDITION",
            reason: "IMAGES_NOT_SIGNED",
            message: format!(
                "{} of {} image(s) of namespace {namespace} could not be signed",
                tally.failed,
                tally.seen()
            ),
        });
    }
    Ok(Verdict::Yes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use hsm_client::v1::ImageSignatureStatus as S;

    fn progress(done: u32, signed: bool, error: &str) -> SignNamespaceProgress {
        SignNamespaceProgress {
            total: 3,
            done,
            repository: "team/app-web".into(),
            tag: format!("v{done}"),
            digest: format!("sha256:{done:064x}"),
            signed,
            error: error.into(),
        }
    }

    #[test]
    fn commands_parse() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        for good in [
            "hsmctl image sign registry.example:5000/team/app-web:1.0",
            "hsmctl image sign registry.example:5000/team/app@sha256:ab --key alias/k",
            "hsmctl image sign-namespace team -o json",
            "hsmctl -o json image verify team/app-web:1.0 --key k",
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        for bad in [
            "hsmctl image sign",
            "hsmctl image sign-namespace",
            "hsmctl image verify",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let cli = parse("hsmctl image verify r:1 --key alias/k").unwrap();
        match cli.command {
            Command::Image(ImageCommand::Verify { reference, key }) => {
                assert_eq!(reference, "r:1");
                assert_eq!(key.as_deref(), Some("alias/k"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verify_exits_zero_only_when_signed() {
        assert_eq!(verdict(S::ImageSigned as i32).unwrap(), Verdict::Yes);
        assert_eq!(verdict(S::ImageUnsigned as i32).unwrap(), Verdict::No);
        assert_eq!(
            verdict(S::ImageSignatureInvalid as i32).unwrap(),
            Verdict::No
        );
        for bad in [S::Unspecified as i32, 42] {
            let line = verdict(bad).unwrap_err().line();
            assert!(
                line.starts_with("error: INTERNAL MALFORMED_RESPONSE"),
                "{line}"
            );
        }
    }

    #[test]
    fn verify_output_shows_each_signature() {
        let resp = VerifyImageResponse {
            repository: "team/app-web".into(),
            digest: "sha256:aa".into(),
            status: S::ImageSignatureInvalid as i32,
            signatures: vec![ImageSignature {
                key_id: "k1".into(),
                valid: false,
                reason: "signature does not verify".into(),
                policy: "release".into(),
                payload_digest: "sha256:bb".into(),
            }],
        };
        let v = verified_json(&resp);
        assert_eq!(v["status"], "IMAGE_SIGNATURE_INVALID");
        assert_eq!(v["signatures"][0]["key_id"], "k1");
        assert_eq!(v["signatures"][0]["valid"], false);
        assert_eq!(v["signatures"][0]["payload_digest"], "sha256:bb");
        let text = verified_text(&resp);
        assert!(
            text.contains("status      IMAGE_SIGNATURE_INVALID\n"),
            "{text}"
        );
        assert!(text.contains("KEY ID  VALID  POLICY   REASON\n"), "{text}");
        assert!(
            text.contains("k1      no     release  signature does not verify\n"),
            "{text}"
        );
        let unsigned = VerifyImageResponse {
            status: S::ImageUnsigned as i32,
            ..Default::default()
        };
        assert!(verified_text(&unsigned).ends_with("signatures: none\n"));
        assert_eq!(verified_json(&unsigned)["signatures"], json!([]));
    }

    #[test]
    fn sign_output() {
        let resp = SignImageResponse {
            repository: "team/app-web".into(),
            digest: "sha256:aa".into(),
            key_id: "k1".into(),
            algorithm: "ECDSA_SHA_256".into(),
            signed: false,
            policy: "release".into(),
        };
        assert_eq!(signed_json(&resp)["signed"], false);
        assert_eq!(signed_json(&resp)["algorithm"], "ECDSA_SHA_256");
        let text = signed_table(&resp);
        assert!(
            text.contains("signed      no (already signed by this key)\n"),
            "{text}"
        );
    }

    #[test]
    fn tally_counts_signed_already_signed_and_failed() {
        let mut t = Tally::default();
        t.add(&progress(1, true, ""));
        t.add(&progress(2, false, ""));
        t.add(&progress(3, false, "manifest unknown"));
        assert_eq!(
            t,
            Tally {
                total: 3,
                signed: 1,
                already_signed: 1,
                failed: 1
            }
        );
        assert_eq!(t.seen(), 3);
        assert_eq!(t.line(), "signed 1, already signed 1, failed 1");
        let v = t.json("team");
        assert_eq!(v["summary"]["already_signed"], 1);
        assert_eq!(v["summary"]["namespace"], "team");
    }

    #[test]
    fn progress_lines_and_json() {
        let digest = format!("sha256:{:064x}", 1);
        assert_eq!(
            progress_line(&progress(1, true, "")),
            format!("[1/3] signed team/app-web:v1@{digest}")
        );
        assert!(progress_line(&progress(2, false, "")).starts_with("[2/3] already signed "));
        let failed = progress_line(&progress(3, false, "registry\nsaid no"));
        assert!(
            failed.starts_with("[3/3] failed team/app-web:v3@"),
            "{failed}"
        );
        assert!(failed.ends_with(": registry said no"), "{failed}");
        let untagged = SignNamespaceProgress {
            tag: String::new(),
            ..progress(1, true, "")
        };
        assert_eq!(image_name(&untagged), format!("team/app-web@{digest}"));
        let v = progress_json(&progress(3, false, "boom"));
        assert_eq!(v["done"], 3);
        assert_eq!(v["tag"], "v3");
        assert_eq!(v["error"], "boom");
        assert_eq!(v["signed"], false);
    }
}
