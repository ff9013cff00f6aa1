//! `hsmctl alias ...`: create, move, delete and list aliases.

use clap::Subcommand;
use serde_json::json;

use super::args::{print, print_json, println};
use super::render::{alias_json, aliases_table};
use super::{CliEnv, CliError, Verdict};

/// Alias commands. NAME is `alias/NAME` or just `NAME`.
#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Create an alias for a key. Prints `alias/NAME -> KEY_ID`.
    Create {
        /// Alias name (alias/NAME or NAME): 1..256 of [A-Za-z0-9/_-], not starting with
        /// "hsmd".
        name: String,
        /// Target key: UUID, or alias/OTHER (resolved to its key first).
        key: String,
    },
    /// Point an existing alias at another key. Prints `alias/NAME -> KEY_ID`.
    Update {
        /// Alias name (alias/NAME or NAME).
        name: String,
        /// New target key: UUID, or alias/OTHER (resolved to its key first).
        key: String,
    },
    /// Delete an alias; the key is unchanged.
    Delete {
        /// Alias name (alias/NAME or NAME).
        name: String,
    },
    /// List aliases (all pages).
    List {
        /// Only the aliases of this key (UUID or alias/NAME).
        #[arg(long, value_name = "K")]
        key: Option<String>,
    },
}

impl AliasCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let alias = match self {
            AliasCommand::Create { name, key } => {
                let target = resolve(env, &key).await?;
                env.client.create_alias(&name, &target).await?
            }
            AliasCommand::Update { name, key } => {
                let target = resolve(env, &key).await?;
                env.client.update_alias(&name, &target).await?
            }
            AliasCommand::Delete { name } => {
                env.client.delete_alias(&name).await?;
                if env.json() {
                    print_json(&json!({ "alias_name": name, "deleted": true }))?;
                } else {
                    println(format!("deleted {name}"))?;
                }
                return Ok(Verdict::Yes);
            }
            AliasCommand::List { key } => {
                let aliases = env.client.list_aliases(key.as_deref()).await?;
                if env.json() {
                    let list: Vec<_> = aliases.iter().map(alias_json).collect();
                    print_json(&json!({ "aliases": list }))?;
                } else {
                    print(&aliases_table(&aliases))?;
                }
                return Ok(Verdict::Yes);
            }
        };
        if env.json() {
            print_json(&alias_json(&alias))?;
        } else {
            println(format!("{} -> {}", alias.alias_name, alias.target_key_id))?;
        }
        Ok(Verdict::Yes)
    }
}

/// The server wants a UUID as an alias target; an alias is resolved to its key here so
/// `alias create new alias/old` works as people expect.
async fn resolve(env: &CliEnv, key: &str) -> Result<String, CliError> {
    if key.starts_with("alias/") {
        Ok(env.client.describe_key(key).await?.key_id)
    } else {
        Ok(key.to_string())
    }
}
