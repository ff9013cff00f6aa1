//! `hsmctl import ...`: bring your own key into an EXTERNAL key (made with `key create
//! --origin external`). `import key` does it all in one go; `params`, `wrap` and
//! `material` are the three steps apart, for when the key file and the server are not
//! on the same machine (`wrap` needs no server).
//!
//! Key files are read into [`Zeroizing`] buffers and never printed; what is printed
//! describes them (spec, form, sizes).

use std::path::Path;

use clap::{Args, Subcommand};
use hsm_client::import::{self, KeyMaterial, WrappingAlgorithm};
use hsm_client::names::{self, wrapping_algorithm_name};
use hsm_client::v1::{GetParametersForImportResponse, ImportKeyMaterialRequest, KeySpec};
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::args::{
    format_timestamp, parse_valid_to, print, print_json, read_input, to_timestamp, write_output,
};
use super::key::print_key;
use super::render::time_cell;
use super::table::Table;
use super::{CliEnv, CliError, Output, Verdict};

/// Bring-your-own-key commands.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import a key file into an EXTERNAL key in one go: fetch import parameters, wrap
    /// the key locally, import it. Prints the key's metadata (now ENABLED).
    Key(KeyArgs),
    /// Step 1: fetch a wrapping public key and an import token (valid 24 hours; a newer
    /// one supersedes it) for an EXTERNAL key. Writes DIR/wrapping-key.pem,
    /// DIR/wrapping-key.der and DIR/import-token.bin; prints the wrapping algorithm, the
    /// wrapping key's spec and when they expire.
    Params(ParamsArgs),
    /// Step 2, offline: wrap a key file under a wrapping public key. Needs no server.
    Wrap(WrapArgs),
    /// Step 3: import wrapped key material with its import token. Prints the key's
    /// metadata (now ENABLED).
    Material(MaterialArgs),
}

/// Arguments of `import key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Key UUID or alias/NAME of an EXTERNAL key.
    key: String,
    /// The key to import (`-` for stdin): PEM or DER, a PKCS#8 private key ("BEGIN
    /// PRIVATE KEY"), a PKCS#1 RSA ("BEGIN RSA PRIVATE KEY") or SEC1 EC ("BEGIN EC
    /// PRIVATE KEY") private key, or a file of exactly 16 or 32 raw AES key bytes.
    #[arg(long = "in", value_name = "KEYFILE")]
    input: String,
    /// RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256 (both for AES keys only),
    /// RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256. Default: hsmd picks one of
    /// the RSA_AES_KEY_WRAP_* algorithms.
    #[arg(long, value_name = "A", value_parser = names::parse::<WrappingAlgorithm>)]
    wrapping_algorithm: Option<WrappingAlgorithm>,
    /// When the imported material expires (hsmd then destroys it and the key goes back
    /// to PENDING_IMPORT): RFC 3339 (2030-01-31T12:00:00Z) or ahead from now (+1h,
    /// +30d). Default: never.
    #[arg(long, value_name = "TIME", value_parser = valid_to_from_now)]
    valid_to: Option<OffsetDateTime>,
}

/// Arguments of `import params`.
#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// Key UUID or alias/NAME of an EXTERNAL key.
    key: String,
    /// RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256 (both for AES keys only),
    /// RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256. Default: hsmd picks one of
    /// the RSA_AES_KEY_WRAP_* algorithms (and prints which).
    #[arg(long, value_name = "A", value_parser = names::parse::<WrappingAlgorithm>)]
    wrapping_algorithm: Option<WrappingAlgorithm>,
    /// Size of the wrapping key: RSA_2048 (the server's default), RSA_3072 or RSA_4096.
    #[arg(long, value_name = "S", value_parser = parse_wrapping_key_spec)]
    wrapping_key_spec: Option<KeySpec>,
    /// Directory to write the wrapping key and the import token to (created if missing;
    /// files in it of the same names are replaced).
    #[arg(long, value_name = "DIR")]
    out_dir: String,
}

/// Arguments of `import wrap`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The wrapping public key from `import params` (wrapping-key.pem or
    /// wrapping-key.der): an RSA SubjectPublicKeyInfo, PEM or DER.
    #[arg(long, value_name = "F")]
    public_key: String,
    /// The algorithm `import params` printed: RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256 (both
    /// for AES keys only), RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256.
    #[arg(long, value_name = "A", value_parser = names::parse::<WrappingAlgorithm>)]
    algorithm: WrappingAlgorithm,
    /// The key to wrap (`-` for stdin): PEM or DER, a PKCS#8, PKCS#1 RSA or SEC1 EC
    /// private key, or a file of exactly 16 or 32 raw AES key bytes.
    #[arg(long = "in", value_name = "KEYFILE")]
    input: String,
    /// Write the wrapped material to this file (`-` for stdout), for `import material
    /// --material`.
    #[arg(long, value_name = "F")]
    out: String,
    /// Also write the key's public half (SubjectPublicKeyInfo DER) to this file, for
    /// `import material --public-key` (required there for ED25519 keys).
    #[arg(long, value_name = "F")]
    write_public_key: Option<String>,
}

/// Arguments of `import material`.
#[derive(Debug, Args)]
pub struct MaterialArgs {
    /// Key UUID or alias/NAME of the EXTERNAL key the import token is for.
    key: String,
    /// The import token from `import params` (import-token.bin).
    #[arg(long, value_name = "F")]
    token: String,
    /// The wrapped key material from `import wrap` (`-` for stdin).
    #[arg(long, value_name = "F")]
    material: String,
    /// The key's public half, SubjectPublicKeyInfo PEM or DER (`import wrap
    /// --write-public-key`). Required for ED25519 keys; for RSA and EC keys hsmd then
    /// checks that it matches the imported private key.
    #[arg(long, value_name = "F")]
    public_key: Option<String>,
    /// When the imported material expires (hsmd then destroys it and the key goes back
    /// to PENDING_IMPORT): RFC 3339 (2030-01-31T12:00:00Z) or ahead from now (+1h,
    /// +30d). Default: never.
    #[arg(long, value_name = "TIME", value_parser = valid_to_from_now)]
    valid_to: Option<OffsetDateTime>,
}

fn valid_to_from_now(input: &str) -> Result<OffsetDateTime, String> {
    parse_valid_to(input, OffsetDateTime::now_utc())
}

/// A wrapping key spec: one of the RSA specs.
fn parse_wrapping_key_spec(input: &str) -> Result<KeySpec, String> {
    match names::parse::<KeySpec>(input).map_err(|e| e.to_string())? {
        s @ (KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096) => Ok(s),
        other => Err(format!(
            "a wrapping key is RSA_2048, RSA_3072 or RSA_4096, not {}",
            other.as_str_name()
        )),
    }
}

impl From<import::ImportError> for CliError {
    fn from(e: import::ImportError) -> Self {
        use import::ImportError as E;
        let reason = match &e {
            E::KeyFile(_) => "INVALID_KEY_FILE",
            E::PublicKey(_) | E::WrappingKey(_) => "INVALID_PUBLIC_KEY",
            E::Algorithm(_) => "INVALID_ARGUMENT",
            E::Wrap(_) => "WRAP_FAILED",
        };
        CliError::Local {
            code: "INVALID_ARGUMENT",
            reason,
            message: e.to_string(),
        }
    }
}

impl ImportCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            ImportCommand::Key(a) => a.run(env).await,
            ImportCommand::Params(a) => a.run(env).await,
            ImportCommand::Wrap(a) => a.run_offline(env.output),
            ImportCommand::Material(a) => a.run(env).await,
        }
    }
}

/// Reads and parses a key file; the raw file is wiped once parsed.
fn read_key_file(path: &str) -> Result<KeyMaterial, CliError> {
    let file = Zeroizing::new(read_input("key file", path)?);
    KeyMaterial::parse(&file).map_err(|e| {
        let e = CliError::from(e);
        match e {
            CliError::Local {
                code,
                reason,
                message,
            } => CliError::Local {
                code,
                reason,
                message: format!("{path}: {message}"),
            },
            other => other,
        }
    })
}

/// What the material is, for people: `EC_P256 private key (PKCS#8, 138 bytes)`.
fn describe(m: &KeyMaterial) -> String {
    let form = if m.is_symmetric() {
        "raw AES key"
    } else {
        "private key, PKCS#8"
    };
    format!(
        "{} ({form}, {} bytes)",
        m.spec().as_str_name(),
        m.as_bytes().len()
    )
}

impl KeyArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let material = read_key_file(&self.input)?;
        let asked = self
            .wrapping_algorithm
            .unwrap_or(WrappingAlgorithm::Unspecified);
        import::check_algorithm(asked, &material)?;
        let params = env
            .client
            .get_parameters_for_import(&self.key, asked, None)
            .await?;
        let algorithm = answered_algorithm(&params)?;
        let wrapped = import::wrap(&params.public_key_der, algorithm, &material)?;
        let req = ImportKeyMaterialRequest {
            key_id: params.key_id,
            import_token: params.import_token,
            encrypted_key_material: wrapped,
            valid_to: self.valid_to.map(to_timestamp),
            public_key_der: material.public_key_der()?.unwrap_or_default(),
        };
        let key = env.client.import_key_material(req).await?;
        print_key(env, &key)
    }
}

/// The algorithm GetParametersForImport answered with (never UNSPECIFIED).
fn answered_algorithm(p: &GetParametersForImportResponse) -> Result<WrappingAlgorithm, CliError> {
    match WrappingAlgorithm::try_from(p.wrapping_algorithm) {
        Ok(a) if a != WrappingAlgorithm::Unspecified => Ok(a),
        _ => Err(CliError::Local {
            code: "INTERNAL",
            reason: "MALFORMED_RESPONSE",
            message: format!(
                "GetParametersForImport answered with wrapping algorithm {}",
                wrapping_algorithm_name(p.wrapping_algorithm)
            ),
        }),
    }
}

impl ParamsArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let algorithm = self
            .wrapping_algorithm
            .unwrap_or(WrappingAlgorithm::Unspecified);
        let p = env
            .client
            .get_parameters_for_import(&self.key, algorithm, self.wrapping_key_spec)
            .await?;
        let dir = Path::new(&self.out_dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::io("cannot create directory", &self.out_dir, e))?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (pem, der, token) = (
            path("wrapping-key.pem"),
            path("wrapping-key.der"),
            path("import-token.bin"),
        );
        let mut text = p.public_key_pem.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        write_output("wrapping public key", &pem, text.as_bytes())?;
        write_output("wrapping public key", &der, &p.public_key_der)?;
        write_output("import token", &token, &p.import_token)?;
        let algorithm = wrapping_algorithm_name(p.wrapping_algorithm);
        let spec = names::name_of::<KeySpec>(p.wrapping_key_spec);
        if env.json() {
            return print_json(&json!({
                "key_id": p.key_id,
                "wrapping_algorithm": algorithm,
                "wrapping_key_spec": spec,
                "parameters_valid_to": format_timestamp(p.parameters_valid_to.as_ref()),
                "wrapping_key_pem": pem,
                "wrapping_key_der": der,
                "import_token": token,
            }))
            .map(|()| Verdict::Yes);
        }
        let mut t = Table::plain();
        t.row(["key_id", p.key_id.as_str()]);
        t.row(["wrapping_algorithm".into(), algorithm]);
        t.row(["wrapping_key_spec".into(), spec]);
        let valid_to = time_cell(p.parameters_valid_to.as_ref());
        t.row(["parameters_valid_to".into(), valid_to]);
        t.row(["wrapping_key".into(), format!("{pem}, {der}")]);
        t.row(["import_token".into(), token]);
        print(&t.render()).map(|()| Verdict::Yes)
    }
}

impl WrapArgs {
    /// Wraps the key file; needs no connection.
    pub fn run_offline(&self, output: Output) -> Result<Verdict, CliError> {
        if output == Output::Json && self.out == "-" {
            return Err(CliError::usage(
                "--out - would mix the wrapped material into the JSON output; name a file",
            ));
        }
        let public_file = read_input("wrapping public key", &self.public_key)?;
        let public = import::public_key_spki_der(&public_file)?;
        let material = read_key_file(&self.input)?;
        if self.write_public_key.is_some() && material.is_symmetric() {
            return Err(CliError::usage(
                "--write-public-key: an AES key has no public half",
            ));
        }
        let wrapped = import::wrap(&public, self.algorithm, &material)?;
        write_output("wrapped key material", &self.out, &wrapped)?;
        if let (Some(path), Some(spki)) = (&self.write_public_key, material.public_key_der()?) {
            write_output("public key", path, &spki)?;
        }
        let algorithm = wrapping_algorithm_name(self.algorithm as i32);
        if output == Output::Json {
            print_json(&json!({
                "key_spec": material.spec().as_str_name(),
                "material_bytes": material.as_bytes().len(),
                "wrapping_algorithm": algorithm,
                "wrapped_bytes": wrapped.len(),
                "out": self.out,
                "public_key_out": self.write_public_key,
            }))?;
        } else if self.out != "-" {
            let mut t = Table::plain();
            t.row(["material".into(), describe(&material)]);
            t.row(["wrapping_algorithm".into(), algorithm]);
            t.row(["wrapped".into(), format!("{} bytes", wrapped.len())]);
            t.row(["out", self.out.as_str()]);
            if let Some(path) = &self.write_public_key {
                t.row(["public_key", path.as_str()]);
            }
            print(&t.render())?;
        }
        Ok(Verdict::Yes)
    }
}

impl MaterialArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let import_token = read_input("import token", &self.token)?;
        let encrypted_key_material = read_input("wrapped key material", &self.material)?;
        let public_key_der = match &self.public_key {
            Some(path) => import::public_key_spki_der(&read_input("public key", path)?)?,
            None => Vec::new(),
        };
        let req = ImportKeyMaterialRequest {
            key_id: self.key,
            import_token,
            encrypted_key_material,
            valid_to: self.valid_to.map(to_timestamp),
            public_key_der,
        };
        let key = env.client.import_key_material(req).await?;
        print_key(env, &key)
    }
}
