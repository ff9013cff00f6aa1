//! `hsmctl key ...`: create, list, describe, export the public half, and the lifecycle
//! (enable, disable, schedule and cancel deletion, and deleting imported material), and
//! rotation of AES keys.

use clap::{Args, Subcommand};
use hsm_client::names::{self, name_of};
use hsm_client::v1::{
    CreateKeyRequest, KeyMetadata, KeyOrigin, KeySpec, KeyState, KeyUsage, ListKeysRequest,
};
use serde_json::json;

use super::args::{parse_tag, print, print_json, println, write_output};
use super::render::{key_json, key_table, keys_table, public_key_json};
use super::{CliEnv, CliError, Verdict};

/// Key management commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key inside the token (with --origin external: a key without material,
    /// PENDING_IMPORT, for `hsmctl import`). Prints only the new key id (json: its
    /// metadata).
    Create(CreateArgs),
    /// List keys, newest first (all pages unless --page-size is given).
    List(ListArgs),
    /// Show a key's metadata.
    Describe {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Export the public key (SubjectPublicKeyInfo) as PEM (default) or DER.
    Public(PublicArgs),
    /// Enable a DISABLED key.
    Enable {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Disable a key: it can no longer sign, verify, encrypt or decrypt until enabled again.
    Disable {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Schedule a key's destruction in the token after a waiting period.
    ScheduleDeletion {
        /// Key UUID or alias/NAME.
        key: String,
        /// Waiting period in days, 7..30 (server default: 30).
        #[arg(long, value_name = "N")]
        days: Option<u32>,
    },
    /// Cancel a scheduled deletion; the key comes back DISABLED.
    CancelDeletion {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Rotate an AES_256 key: make a new version inside the token. Encrypt uses the new
    /// version from now on; ciphertexts of earlier versions still decrypt. Prints
    /// `<key id> version <N>` (json: the metadata, with `versions`).
    Rotate {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Rotate an AES_256 key automatically every N days (7..365), first N days from now;
    /// again to change the period.
    EnableRotation {
        /// Key UUID or alias/NAME.
        key: String,
        /// Rotation period in days, 7..365.
        #[arg(long, value_name = "N")]
        period_days: u32,
    },
    /// Stop a key's automatic rotation (its versions stay).
    DisableRotation {
        /// Key UUID or alias/NAME.
        key: String,
    },
    /// Destroy an EXTERNAL key's imported material in the token. The key goes back to
    /// PENDING_IMPORT and takes only the same material again (`hsmctl import`).
    DeleteMaterial {
        /// Key UUID or alias/NAME of an EXTERNAL key.
        key: String,
    },
}

/// Arguments of `key create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Key spec: RSA_2048, RSA_3072, RSA_4096, EC_P256, EC_P384, ED25519, AES_256, SM2,
    /// or AES_128 (with --origin external only) (any case, `-` or `_`).
    #[arg(long, value_name = "S", value_parser = names::parse::<KeySpec>)]
    spec: KeySpec,
    /// Key usage: sign-verify or encrypt-decrypt.
    #[arg(long, value_name = "U", value_parser = names::parse::<KeyUsage>)]
    usage: KeyUsage,
    /// Where the key material comes from: hsm (generated in the token) or external
    /// (the key is created without material, PENDING_IMPORT, and takes material you
    /// bring with `hsmctl import key`, or `import params` then `import material`).
    #[arg(
        long,
        value_name = "O",
        default_value = "hsm",
        value_parser = names::parse::<KeyOrigin>
    )]
    origin: KeyOrigin,
    /// Alias to create with the key (alias/NAME or NAME).
    #[arg(long, value_name = "A")]
    alias: Option<String>,
    /// Free-text description (at most 1024 bytes).
    #[arg(long, value_name = "D")]
    description: Option<String>,
    /// Tag key=value; repeat for more tags.
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Idempotency token: repeating the command with the same token returns the key the
    /// first run made instead of making another one.
    #[arg(long, value_name = "T")]
    idempotency_token: Option<String>,
    /// Rotate the key automatically every N days (7..365; AES_256 keys of origin hsm).
    #[arg(long, value_name = "N")]
    rotation_period_days: Option<u32>,
}

/// Arguments of `key list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys in this state (ENABLED, DISABLED, PENDING_DELETION, PENDING_IMPORT,
    /// DESTROYED). Default: every state but DESTROYED.
    #[arg(long, value_name = "S", value_parser = names::parse::<KeyState>)]
    state: Option<KeyState>,
    /// Only keys with this usage (sign-verify, encrypt-decrypt).
    #[arg(long, value_name = "U", value_parser = names::parse::<KeyUsage>)]
    usage: Option<KeyUsage>,
    /// Only keys with an alias starting with this prefix (alias/pay or pay).
    #[arg(long, value_name = "P")]
    alias_prefix: Option<String>,
    /// Fetch a single page of at most N keys (1..1000) instead of every page; the token
    /// for the next page is printed on stderr (json: `next_page_token`).
    #[arg(long, value_name = "N")]
    page_size: Option<u32>,
    /// Continue a paged listing (with --page-size).
    #[arg(long, value_name = "T", requires = "page_size")]
    page_token: Option<String>,
}

/// Arguments of `key public`.
#[derive(Debug, Args)]
pub struct PublicArgs {
    /// Key UUID or alias/NAME.
    key: String,
    /// PEM ("-----BEGIN PUBLIC KEY-----"); the default.
    #[arg(long, conflicts_with = "der")]
    pem: bool,
    /// DER bytes instead of PEM (use with --out; raw bytes on stdout otherwise).
    #[arg(long)]
    der: bool,
    /// Write the key to this file instead of stdout.
    #[arg(long, value_name = "F")]
    out: Option<String>,
}

impl KeyCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let key = match self {
            KeyCommand::Create(a) => return a.run(env).await,
            KeyCommand::List(a) => return a.run(env).await,
            KeyCommand::Public(a) => return a.run(env).await,
            KeyCommand::Describe { key } => {
                return print_key(env, &env.client.describe_key(&key).await?);
            }
            KeyCommand::Enable { key } => env.client.enable_key(&key).await?,
            KeyCommand::Disable { key } => env.client.disable_key(&key).await?,
            KeyCommand::ScheduleDeletion { key, days } => {
                let days = days.unwrap_or(0);
                env.client.schedule_key_deletion(&key, days).await?
            }
            KeyCommand::CancelDeletion { key } => env.client.cancel_key_deletion(&key).await?,
            KeyCommand::DeleteMaterial { key } => {
                env.client.delete_imported_key_material(&key).await?
            }
            KeyCommand::Rotate { key } => {
                let key = env.client.rotate_key(&key).await?;
                if env.json() {
                    print_json(&key_json(&key))?;
                } else {
                    println(format!("{} version {}", key.key_id, key.current_version))?;
                }
                return Ok(Verdict::Yes);
            }
            KeyCommand::EnableRotation { key, period_days } => {
                let key = env.client.enable_key_rotation(&key, period_days).await?;
                return print_key(env, &key);
            }
            KeyCommand::DisableRotation { key } => {
                let key = env.client.disable_key_rotation(&key).await?;
                return print_key(env, &key);
            }
        };
        // Lifecycle changes: `<key id> <STATE> [<deletion time>]`, or the metadata.
        if env.json() {
            print_json(&key_json(&key))?;
        } else {
            let mut line = format!("{} {}", key.key_id, name_of::<KeyState>(key.state));
            if let Some(t) = super::args::format_timestamp(key.deletion_time.as_ref()) {
                line = format!("{line} {t}");
            }
            println(line)?;
        }
        Ok(Verdict::Yes)
    }
}

/// Prints a key's metadata: a table, or its JSON object.
pub(super) fn print_key(env: &CliEnv, key: &KeyMetadata) -> Result<Verdict, CliError> {
    if env.json() {
        print_json(&key_json(key))?;
    } else {
        print(&key_table(key))?;
    }
    Ok(Verdict::Yes)
}

impl CreateArgs {
    /// The origin asked for (hsm unless --origin says otherwise).
    #[cfg(test)]
    pub fn origin(&self) -> KeyOrigin {
        self.origin
    }

    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let req = CreateKeyRequest {
            spec: self.spec as i32,
            usage: self.usage as i32,
            origin: self.origin as i32,
            alias: self.alias.unwrap_or_default(),
            description: self.description.unwrap_or_default(),
            tags: self.tags.into_iter().collect(),
            idempotency_token: self.idempotency_token.unwrap_or_default(),
            rotation_period_days: self.rotation_period_days.unwrap_or(0),
        };
        let key = env.client.create_key(req).await?;
        if env.json() {
            print_json(&key_json(&key))?;
        } else {
            println(&key.key_id)?;
        }
        Ok(Verdict::Yes)
    }
}

impl ListArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let req = ListKeysRequest {
            page_size: self.page_size.unwrap_or(0),
            page_token: self.page_token.unwrap_or_default(),
            state: self.state.map_or(0, |s| s as i32),
            usage: self.usage.map_or(0, |u| u as i32),
            alias_prefix: self.alias_prefix.unwrap_or_default(),
        };
        let (keys, next) = if self.page_size.is_some() {
            let page = env.client.list_keys(req).await?;
            (page.keys, page.next_page_token)
        } else {
            (env.client.list_all_keys(req).await?, String::new())
        };
        if env.json() {
            let keys: Vec<_> = keys.iter().map(key_json).collect();
            print_json(&json!({ "keys": keys, "next_page_token": next }))?;
        } else {
            print(&keys_table(&keys))?;
            if !next.is_empty() {
                eprintln!("more keys: --page-token {next}");
            }
        }
        Ok(Verdict::Yes)
    }
}

impl PublicArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let public = env.client.get_public_key(&self.key).await?;
        if env.json() {
            let mut v = public_key_json(&public);
            if let Some(out) = &self.out {
                write_public(&public, self.der, out)?;
                v["out"] = json!(out);
            }
            print_json(&v)?;
        } else {
            write_public(&public, self.der, self.out.as_deref().unwrap_or("-"))?;
        }
        Ok(Verdict::Yes)
    }
}

fn write_public(
    public: &hsm_client::v1::GetPublicKeyResponse,
    der: bool,
    out: &str,
) -> Result<(), CliError> {
    if der {
        write_output("public key", out, &public.public_key_der)
    } else {
        let mut pem = public.public_key_pem.clone();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        write_output("public key", out, pem.as_bytes())
    }
}
