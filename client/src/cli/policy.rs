//! `hsmctl policy ...`: the signature policies of registry namespaces, one per
//! namespace: which of its images hsmd signs (repository and tag patterns), with which
//! key, and when (on push, on request, or on a cron schedule).

use clap::{Args, Subcommand};
use hsm_client::names::{self, name_of};
use hsm_client::v1::{
    CreateSignaturePolicyRequest, PatternList, SignaturePolicy, SignatureTrigger,
    UpdateSignaturePolicyRequest,
};
use serde_json::{Value, json};

use super::args::{format_timestamp, print, print_json, println};
use super::render::time_cell;
use super::table::{Table, cell, or_dash};
use super::{CliEnv, CliError, Verdict};

/// Signature policy commands. NS is a namespace of the registry hsmd is configured with:
/// the first path segment of its repositories ("team" in "team/app-web").
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a namespace's signature policy (one per namespace). Images already in the
    /// namespace are not signed until `hsmctl image sign-namespace NS`. Prints the policy.
    Create(CreateArgs),
    /// Show a namespace's signature policy.
    Describe {
        /// Registry namespace.
        #[arg(long, value_name = "NS")]
        namespace: String,
    },
    /// Change a policy: only the options given change, the others keep their values
    /// (--repo and --tag replace the whole list). Prints the policy as it now is.
    Update(UpdateArgs),
    /// Delete a namespace's policy AND the signatures it made in the namespace's
    /// repositories (everything else in the `.sig` manifests is kept). Refused without --confirm.
    Delete(DeleteArgs),
    /// List signature policies: every namespace's, or one's.
    List {
        /// Only the policy of this namespace.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
}

/// Arguments of `policy create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Registry namespace the policy is for.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// Policy name (named in every signature it makes).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Signing key: UUID or alias/NAME of an ENABLED sign-verify key of spec RSA_2048,
    /// RSA_3072 or RSA_4096 (signs with RSA_PKCS1_SHA_256), EC_P256 (ECDSA_SHA_256) or
    /// EC_P384 (ECDSA_SHA_384).
    #[arg(long, value_name = "KEY")]
    key: String,
    /// Repositories below the namespace to sign, as a doublestar pattern ("app-*",
    /// "services/**"); repeat for more. Default: every repository ("**").
    #[arg(long = "repo", value_name = "PATTERN")]
    repos: Vec<String>,
    /// Tags to sign, as a doublestar pattern ("v*", "release-*"); repeat for more.
    /// Default: every tag.
    #[arg(long = "tag", value_name = "PATTERN")]
    tags: Vec<String>,
    /// Also sign manifests pushed by digest, without a tag.
    #[arg(long)]
    untagged: bool,
    /// When to sign: event (on push), manual (only on `hsmctl image sign` or
    /// `sign-namespace`) or scheduled (by --cron).
    #[arg(
        long,
        value_name = "TRIGGER",
        default_value = "event",
        value_parser = names::parse::<SignatureTrigger>
    )]
    trigger: SignatureTrigger,
    /// Cron expression (UTC) of a scheduled policy: 5 fields, or 6 with seconds first
    /// ("0 3 * * *": every day at 03:00). Required with --trigger scheduled, refused
    /// otherwise.
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// Registry host (and port) written into signatures' docker-reference. Default: the
    /// configured registry's.
    #[arg(long, value_name = "HOST")]
    domain: Option<String>,
    /// Create the policy disabled: it signs nothing until `policy update --enabled true`.
    #[arg(long)]
    disabled: bool,
    /// Free-text description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
}

/// Arguments of `policy update`: every option but --namespace is a change.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Registry namespace whose policy to change.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// New policy name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// New signing key (UUID or alias/NAME; the same specs as `policy create --key`).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Replace the repository patterns with these; repeat for more.
    #[arg(long = "repo", value_name = "PATTERN")]
    repos: Vec<String>,
    /// Replace the repository patterns with none, which means every repository of the
    /// namespace (`**`).
    #[arg(long, conflicts_with = "repos")]
    clear_repos: bool,
    /// Replace the tag patterns with these; repeat for more.
    #[arg(long = "tag", value_name = "PATTERN")]
    tags: Vec<String>,
    /// Replace the tag patterns with an empty list (every tag).
    #[arg(long, conflicts_with = "tags")]
    clear_tags: bool,
    /// Whether to also sign manifests pushed by digest, without a tag.
    #[arg(long, value_name = "BOOL")]
    untagged: Option<bool>,
    /// When to sign: event, manual or scheduled (scheduled needs a cron expression,
    /// already set or given with --cron).
    #[arg(long, value_name = "TRIGGER", value_parser = names::parse::<SignatureTrigger>)]
    trigger: Option<SignatureTrigger>,
    /// New cron expression (UTC) of a scheduled policy.
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// New registry host written into signatures' docker-reference.
    #[arg(long, value_name = "HOST")]
    domain: Option<String>,
    /// Enable (true) or disable (false) the policy.
    #[arg(long, value_name = "BOOL")]
    enabled: Option<bool>,
    /// New free-text description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
}

/// Arguments of `policy delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Registry namespace whose policy to delete.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// Go ahead: deleting the policy also deletes the signatures it made in the
    /// namespace's repositories (everything else in the `.sig` manifests is kept).
    #[arg(long)]
    confirm: bool,
}

impl PolicyCommand {
    /// Refuses, before any connection, what needs no server to refuse: a delete without
    /// --confirm, an update that changes nothing.
    pub fn check(&self) -> Result<(), CliError> {
        match self {
            PolicyCommand::Delete(a) => a.check(),
            PolicyCommand::Update(a) => a.check(),
            _ => Ok(()),
        }
    }

    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        self.check()?;
        let policy = match self {
            PolicyCommand::Create(a) => env.client.create_signature_policy(a.request()).await?,
            PolicyCommand::Describe { namespace } => {
                env.client.describe_signature_policy(&namespace).await?
            }
            PolicyCommand::Update(a) => env.client.update_signature_policy(a.request()).await?,
            PolicyCommand::Delete(a) => return a.run(env).await,
            PolicyCommand::List { namespace } => {
                let policies = env
                    .client
                    .list_signature_policies(namespace.as_deref())
                    .await?;
                return print_policies(env, &policies);
            }
        };
        print_policy(env, &policy)
    }
}

impl CreateArgs {
    /// The CreateSignaturePolicy request these arguments make.
    fn request(self) -> CreateSignaturePolicyRequest {
        CreateSignaturePolicyRequest {
            namespace: self.namespace,
            name: self.name,
            description: self.description.unwrap_or_default(),
            disabled: self.disabled,
            key_id: self.key,
            domain: self.domain.unwrap_or_default(),
            repositories: self.repos,
            tags: self.tags,
            untagged: self.untagged,
            trigger: self.trigger as i32,
            cron: self.cron.unwrap_or_default(),
        }
    }
}

impl UpdateArgs {
    /// Refuses an update that would change nothing.
    fn check(&self) -> Result<(), CliError> {
        let request = UpdateSignaturePolicyRequest {
            namespace: String::new(),
            ..self.changes()
        };
        if request == UpdateSignaturePolicyRequest::default() {
            return Err(CliError::usage(format!(
                "policy update --namespace {}: nothing to change; give at least one of \
                 --name, --key, --repo, --clear-repos, --tag, --clear-tags, --untagged, \
                 --trigger, --cron, --domain, --enabled, --description",
                self.namespace
            )));
        }
        Ok(())
    }

    /// The UpdateSignaturePolicy request these arguments make: only what is given is
    /// set.
    fn request(self) -> UpdateSignaturePolicyRequest {
        self.changes()
    }

    /// The request, from a borrow (for [`UpdateArgs::check`]).
    fn changes(&self) -> UpdateSignaturePolicyRequest {
        UpdateSignaturePolicyRequest {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
            key_id: self.key.clone(),
            domain: self.domain.clone(),
            repositories: pattern_list(&self.repos, self.clear_repos),
            tags: pattern_list(&self.tags, self.clear_tags),
            untagged: self.untagged,
            trigger: self.trigger.map_or(0, |t| t as i32),
            cron: self.cron.clone(),
        }
    }
}

/// A list to replace the policy's with: the patterns given, an empty list when asked
/// to clear it, or nothing (unchanged).
fn pattern_list(patterns: &[String], clear: bool) -> Option<PatternList> {
    (clear || !patterns.is_empty()).then(|| PatternList {
        patterns: patterns.to_vec(),
    })
}

impl DeleteArgs {
    /// Refuses to delete without --confirm.
    fn check(&self) -> Result<(), CliError> {
        if self.confirm {
            return Ok(());
        }
        Err(CliError::Local {
            code: "INVALID_ARGUMENT",
            reason: "CONFIRMATION_REQUIRED",
            message: format!(
                "deleting the policy of namespace {} also deletes the signatures it made in \
                 the namespace's repositories (everything else in the `.sig` manifests is kept); add \
                 --confirm to go ahead",
                self.namespace
            ),
        })
    }

    /// Deletes the policy; prints it with the number of signatures removed.
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let resp = env.client.delete_signature_policy(&self.namespace).await?;
        let policy = resp.policy.unwrap_or_default();
        if env.json() {
            print_json(&json!({
                "policy": policy_json(&policy),
                "signatures_removed": resp.signatures_removed,
            }))?;
        } else {
            println(format!(
                "deleted policy {} of namespace {}: {} signature(s) removed",
                cell(&policy.name),
                cell(&policy.namespace),
                resp.signatures_removed
            ))?;
        }
        Ok(Verdict::Yes)
    }
}

/// Prints a policy: key/value lines, or its JSON object.
fn print_policy(env: &CliEnv, policy: &SignaturePolicy) -> Result<Verdict, CliError> {
    if env.json() {
        print_json(&policy_json(policy))?;
    } else {
        print(&policy_table(policy))?;
    }
    Ok(Verdict::Yes)
}

/// Prints policies: a table, or `{"policies": [...]}`.
fn print_policies(env: &CliEnv, policies: &[SignaturePolicy]) -> Result<Verdict, CliError> {
    if env.json() {
        let list: Vec<Value> = policies.iter().map(policy_json).collect();
        print_json(&json!({ "policies": list }))?;
    } else {
        print(&policies_table(policies))?;
    }
    Ok(Verdict::Yes)
}

/// A policy as a JSON object: the proto's field names, the trigger by name, times in
/// RFC 3339.
pub fn policy_json(p: &SignaturePolicy) -> Value {
    json!({
        "namespace": p.namespace,
        "name": p.name,
        "description": p.description,
        "enabled": p.enabled,
        "key": p.key,
        "key_id": p.key_id,
        "algorithm": p.algorithm,
        "domain": p.domain,
        "repositories": p.repositories,
        "tags": p.tags,
        "untagged": p.untagged,
        "trigger": name_of::<SignatureTrigger>(p.trigger),
        "cron": p.cron,
        "create_time": format_timestamp(p.create_time.as_ref()),
        "update_time": format_timestamp(p.update_time.as_ref()),
    })
}

/// `yes` or `no`.
fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Patterns for a table cell, `-` for none.
fn patterns_cell(patterns: &[String], separator: &str) -> String {
    or_dash(cell(&patterns.join(separator)))
}

/// A policy as `field  value` lines.
pub fn policy_table(p: &SignaturePolicy) -> String {
    let mut t = Table::plain();
    t.row(["namespace".into(), or_dash(cell(&p.namespace))]);
    t.row(["name".into(), or_dash(cell(&p.name))]);
    t.row(["description".into(), or_dash(cell(&p.description))]);
    t.row(["enabled".into(), yes_no(p.enabled)]);
    t.row(["key".into(), or_dash(cell(&p.key))]);
    t.row(["key_id".into(), or_dash(cell(&p.key_id))]);
    t.row(["algorithm".into(), or_dash(cell(&p.algorithm))]);
    t.row(["domain".into(), or_dash(cell(&p.domain))]);
    t.row(["repositories".into(), patterns_cell(&p.repositories, ", ")]);
    t.row(["tags".into(), patterns_cell(&p.tags, ", ")]);
    t.row(["untagged".into(), yes_no(p.untagged)]);
    t.row(["trigger".into(), name_of::<SignatureTrigger>(p.trigger)]);
    t.row(["cron".into(), or_dash(cell(&p.cron))]);
    t.row(["created".into(), time_cell(p.create_time.as_ref())]);
    t.row(["updated".into(), time_cell(p.update_time.as_ref())]);
    t.render()
}

/// Policies as a table, one line each.
pub fn policies_table(policies: &[SignaturePolicy]) -> String {
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "ENABLED",
        "TRIGGER",
        "KEY",
        "REPOSITORIES",
        "TAGS",
        "UPDATED",
    ]);
    for p in policies {
        t.row([
            cell(&p.namespace),
            or_dash(cell(&p.name)),
            yes_no(p.enabled),
            name_of::<SignatureTrigger>(p.trigger),
            or_dash(cell(&p.key)),
            patterns_cell(&p.repositories, ","),
            patterns_cell(&p.tags, ","),
            time_cell(p.update_time.as_ref()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// Parses a command line that must be a `policy` command.
    fn policy(line: &[&str]) -> PolicyCommand {
        let args = ["hsmctl", "policy"].iter().chain(line).copied();
        match Cli::try_parse_from(args).unwrap().command {
            Command::Policy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn update(line: &[&str]) -> UpdateSignaturePolicyRequest {
        match policy(line) {
            PolicyCommand::Update(a) => a.request(),
            other => panic!("{other:?}"),
        }
    }

    fn sample() -> SignaturePolicy {
        SignaturePolicy {
            namespace: "team".into(),
            name: "release".into(),
            enabled: true,
            key: "alias/images".into(),
            key_id: "0b5e6c1e-0000-4000-8000-000000000001".into(),
            algorithm: "ECDSA_SHA_256".into(),
            domain: "registry.example:5000".into(),
            repositories: vec!["app-*".into(), "tools/**".into()],
            tags: vec!["v*".into()],
            trigger: SignatureTrigger::Scheduled as i32,
            cron: "0 3 * * *".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn create_maps_every_option() {
        let line = [
            "create",
            "--namespace",
            "team",
            "--name",
            "release",
            "--key",
            "alias/images",
            "--repo",
            "app-*",
            "--repo",
            "{a,b}/**",
            "--tag",
            "v*",
            "--untagged",
            "--trigger",
            "scheduled",
            "--cron",
            "0 3 * * *",
            "--domain",
            "registry.example:5000",
            "--disabled",
            "--description",
            "signed releases",
        ];
        let PolicyCommand::Create(a) = policy(&line) else {
            panic!("not create")
        };
        let req = a.request();
        assert_eq!(req.namespace, "team");
        assert_eq!(req.name, "release");
        assert_eq!(req.key_id, "alias/images");
        // Brace patterns keep their commas: the list is never split.
        assert_eq!(req.repositories, ["app-*", "{a,b}/**"]);
        assert_eq!(req.tags, ["v*"]);
        assert!(req.untagged && req.disabled);
        assert_eq!(req.trigger, SignatureTrigger::Scheduled as i32);
        assert_eq!(req.cron, "0 3 * * *");
        assert_eq!(req.domain, "registry.example:5000");
        assert_eq!(req.description, "signed releases");
    }

    #[test]
    fn create_defaults_to_event_enabled_and_server_defaults() {
        let line = ["create", "--namespace", "t", "--name", "n", "--key", "k"];
        let PolicyCommand::Create(a) = policy(&line) else {
            panic!("not create")
        };
        let req = a.request();
        assert_eq!(req.trigger, SignatureTrigger::Event as i32);
        assert!(!req.disabled && !req.untagged);
        assert!(req.repositories.is_empty() && req.tags.is_empty());
        assert!(req.domain.is_empty() && req.cron.is_empty());
    }

    #[test]
    fn create_needs_namespace_name_and_key_and_a_known_trigger() {
        let parses = |line: &str| Cli::try_parse_from(line.split_whitespace()).is_ok();
        assert!(!parses("hsmctl policy create --namespace t --name n"));
        assert!(!parses("hsmctl policy create --name n --key k"));
        assert!(!parses(
            "hsmctl policy create --namespace t --name n --key k --trigger push"
        ));
        assert!(!parses(
            "hsmctl policy create --namespace t --name n --key k --trigger unspecified"
        ));
        assert!(parses(
            "hsmctl policy create --namespace t --name n --key k --trigger MANUAL -o json"
        ));
    }

    #[test]
    fn update_sets_only_what_is_given() {
        let req = update(&["update", "--namespace", "team", "--enabled", "false"]);
        assert_eq!(req.namespace, "team");
        assert_eq!(req.enabled, Some(false));
        assert_eq!(req.repositories, None);
        assert_eq!(req.tags, None);
        assert_eq!(req.name, None);
        assert_eq!(req.key_id, None);
        assert_eq!(req.untagged, None);
        assert_eq!(req.cron, None);
        assert_eq!(req.trigger, SignatureTrigger::Unspecified as i32);
    }

    #[test]
    fn update_lists_are_replaced_or_cleared() {
        let req = update(&[
            "update",
            "--namespace",
            "team",
            "--repo",
            "a",
            "--repo",
            "b/**",
            "--clear-tags",
            "--untagged",
            "true",
            "--trigger",
            "manual",
            "--key",
            "alias/new",
        ]);
        let patterns = |l: Option<PatternList>| l.map(|l| l.patterns);
        assert_eq!(
            patterns(req.repositories),
            Some(vec!["a".into(), "b/**".into()])
        );
        assert_eq!(patterns(req.tags), Some(vec![]));
        assert_eq!(req.untagged, Some(true));
        assert_eq!(req.trigger, SignatureTrigger::Manual as i32);
        assert_eq!(req.key_id.as_deref(), Some("alias/new"));
        let bad = ["update", "--namespace", "t", "--tag", "v*", "--clear-tags"];
        let args = ["hsmctl", "policy"].iter().chain(&bad).copied();
        assert!(Cli::try_parse_from(args).is_err());
        let bad = ["update", "--namespace", "t", "--enabled", "yes"];
        let args = ["hsmctl", "policy"].iter().chain(&bad).copied();
        assert!(Cli::try_parse_from(args).is_err());
    }

    #[test]
    fn update_without_a_change_is_refused() {
        let err = policy(&["update", "--namespace", "team"])
            .check()
            .unwrap_err();
        assert!(err.line().contains("nothing to change"), "{}", err.line());
        assert!(
            policy(&["update", "--namespace", "t", "--cron", "* * * * *"])
                .check()
                .is_ok()
        );
    }

    #[test]
    fn delete_without_confirm_is_refused() {
        let err = policy(&["delete", "--namespace", "team"])
            .check()
            .unwrap_err();
        let line = err.line();
        assert!(
            line.starts_with("error: INVALID_ARGUMENT CONFIRMATION_REQUIRED: "),
            "{line}"
        );
        assert!(line.contains("--confirm"), "{line}");
        assert!(line.contains("also deletes the signatures"), "{line}");
        assert!(
            policy(&["delete", "--namespace", "team", "--confirm"])
                .check()
                .is_ok()
        );
    }

    #[test]
    fn delete_help_warns_about_signatures() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let delete = cli
            .find_subcommand_mut("policy")
            .and_then(|p| p.find_subcommand_mut("delete"))
            .expect("policy delete");
        let help = delete.render_long_help().to_string();
        assert!(help.contains("signatures it made"), "{help}");
        assert!(help.contains("is kept"), "{help}");
    }

    #[test]
    fn policy_json_uses_proto_names() {
        let v = policy_json(&sample());
        assert_eq!(v["namespace"], "team");
        assert_eq!(v["key_id"], "0b5e6c1e-0000-4000-8000-000000000001");
        assert_eq!(v["trigger"], "SCHEDULED");
        assert_eq!(v["repositories"], json!(["app-*", "tools/**"]));
        assert_eq!(v["untagged"], false);
        assert_eq!(v["create_time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["update_time"], Value::Null);
        let mut p = sample();
        p.trigger = 0;
        assert_eq!(policy_json(&p)["trigger"], "SIGNATURE_TRIGGER_UNSPECIFIED");
    }

    #[test]
    fn policy_table_is_aligned_key_values() {
        let text = policy_table(&sample());
        for line in [
            "namespace     team",
            "enabled       yes",
            "key           alias/images",
            "repositories  app-*, tools/**",
            "untagged      no",
            "trigger       SCHEDULED",
            "cron          0 3 * * *",
            "created       1970-01-01T00:00:00Z",
            "updated       -",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let list = policies_table(&[sample()]);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        assert!(
            lines[0].starts_with("NAMESPACE  NAME     ENABLED"),
            "{list}"
        );
        assert!(lines[1].starts_with("team       release  yes"), "{list}");
    }
}
