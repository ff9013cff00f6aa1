//! `hsmctl token info`: the token hsmd runs on, the capabilities it probed at start-up,
//! and the key specs and signing algorithms it offers there.

use clap::Subcommand;
use hsm_client::names::names_of;
use hsm_client::v1::{EncryptionAlgorithm, GetTokenInfoResponse, KeySpec, SigningAlgorithm};
use serde_json::{Value, json};

use super::args::{print, print_json};
use super::table::{Table, cell, or_dash};
use super::{CliEnv, CliError, Verdict};

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Describe the token: identity, PKCS#11 module, probed capabilities (with which
    /// path each algorithm takes), key specs and signing algorithms offered.
    Info,
}

impl TokenCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            TokenCommand::Info => {
                let info = env.client.token_info().await?;
                if env.json() {
                    print_json(&token_json(&info))?;
                } else {
                    print(&token_text(&info))?;
                }
                Ok(Verdict::Yes)
            }
        }
    }
}

fn token_json(i: &GetTokenInfoResponse) -> Value {
    let capabilities: Vec<Value> = i
        .capabilities
        .iter()
        .map(|c| json!({ "mechanism": c.mechanism, "supported": c.supported, "note": c.note }))
        .collect();
    json!({
        "label": i.label,
        "manufacturer": i.manufacturer,
        "model": i.model,
        "serial_number": i.serial_number,
        "module_path": i.module_path,
        "library_description": i.library_description,
        "library_version": i.library_version,
        "capabilities": capabilities,
        "key_specs": names_of::<KeySpec>(&i.key_specs),
        "signing_algorithms": names_of::<SigningAlgorithm>(&i.signing_algorithms),
        "session_pool_size": i.session_pool_size,
        "encryption_algorithms": names_of::<EncryptionAlgorithm>(&i.encryption_algorithms),
        "algorithm_paths": i.algorithm_paths.iter().map(|p| json!({
            "algorithm": p.algorithm, "offered": p.offered, "path": p.path,
        })).collect::<Vec<Value>>(),
        "refusals": i.refusals.iter().map(|r| json!({
            "feature": r.feature, "mechanism": r.mechanism, "reason": r.reason,
        })).collect::<Vec<Value>>(),
        "usage_enforced_by_token": i.usage_enforced_by_token,
    })
}

/// Five blocks: the token's identity, the capability table, what is offered, the path
/// each encryption algorithm takes, and what is refused on this token and why.
fn token_text(i: &GetTokenInfoResponse) -> String {
    let library = format!("{} {}", i.library_description, i.library_version);
    let mut about = Table::plain();
    about.row(["label".to_string(), or_dash(cell(&i.label))]);
    about.row(["manufacturer".to_string(), or_dash(cell(&i.manufacturer))]);
    about.row(["model".to_string(), or_dash(cell(&i.model))]);
    about.row(["serial".to_string(), or_dash(cell(&i.serial_number))]);
    about.row(["module".to_string(), or_dash(cell(&i.module_path))]);
    about.row(["library".to_string(), or_dash(cell(library.trim()))]);
    about.row(["sessions".to_string(), i.session_pool_size.to_string()]);
    let usage = if i.usage_enforced_by_token {
        "by the token and by hsmd"
    } else {
        "by hsmd only (the token sets CKA_SIGN and CKA_DECRYPT on every key pair)"
    };
    about.row(["key usage".to_string(), usage.to_string()]);

    let mut caps = Table::new(&["MECHANISM", "SUPPORTED", "NOTE"]);
    for c in &i.capabilities {
        let supported = if c.supported { "yes" } else { "no" };
        caps.row([cell(&c.mechanism), supported.to_string(), cell(&c.note)]);
    }

    let mut offered = Table::plain();
    let specs = names_of::<KeySpec>(&i.key_specs).join(", ");
    let algorithms = names_of::<SigningAlgorithm>(&i.signing_algorithms).join(", ");
    offered.row(["key specs".to_string(), or_dash(specs)]);
    offered.row(["signing algorithms".to_string(), or_dash(algorithms)]);
    let encryption = names_of::<EncryptionAlgorithm>(&i.encryption_algorithms).join(", ");
    offered.row(["encryption algorithms".to_string(), or_dash(encryption)]);

    let mut paths = Table::new(&["ENCRYPTION ALGORITHM", "OFFERED", "PATH"]);
    for p in &i.algorithm_paths {
        let offered = if p.offered { "yes" } else { "no" };
        paths.row([cell(&p.algorithm), offered.to_string(), cell(&p.path)]);
    }

    let mut refused = Table::new(&["FEATURE", "STATUS", "MECHANISM", "REASON"]);
    for r in &i.refusals {
        refused.row([
            cell(&r.feature),
            "refused".to_string(),
            cell(&r.mechanism),
            cell(&r.reason),
        ]);
    }
    let refused = if i.refusals.is_empty() {
        "refused: nothing (every feature hsmd has is available on this token)\n".to_string()
    } else {
        refused.render()
    };

    format!(
        "{}\n{}\n{}\n{}\n{}",
        about.render(),
        caps.render(),
        offered.render(),
        paths.render(),
        refused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_client::v1::Capability;

    #[test]
    fn text_has_identity_capabilities_and_offer() {
        let info = GetTokenInfoResponse {
            label: "hsmd-dev".into(),
            library_description: "SoftHSM".into(),
            library_version: "2.6".into(),
            capabilities: vec![Capability {
                mechanism: "CKM_ECDSA".into(),
                supported: true,
                note: "ECDSA over a digest made in hsmd".into(),
            }],
            key_specs: vec![KeySpec::EcP256 as i32],
            signing_algorithms: vec![SigningAlgorithm::EcdsaSha256 as i32],
            ..Default::default()
        };
        let text = token_text(&info);
        assert!(text.starts_with("label         hsmd-dev\n"), "{text}");
        assert!(text.contains("library       SoftHSM 2.6\n"), "{text}");
        assert!(text.contains("CKM_ECDSA  yes        ECDSA over"), "{text}");
        assert!(text.contains("key specs              EC_P256\n"), "{text}");
        assert_eq!(token_json(&info)["signing_algorithms"][0], "ECDSA_SHA_256");
        assert!(text.contains("refused: nothing"), "{text}");
    }

    #[test]
    fn refusals_are_listed_with_the_word_refused() {
        let info = GetTokenInfoResponse {
            refusals: vec![hsm_client::v1::Refusal {
                feature: "RSA_4096".into(),
                mechanism: "CKM_RSA_PKCS_KEY_PAIR_GEN".into(),
                reason: "the token generates RSA keys of 1024..3072 bits only".into(),
            }],
            ..Default::default()
        };
        let text = token_text(&info);
        assert!(
            text.contains("RSA_4096  refused  CKM_RSA_PKCS_KEY_PAIR_GEN  the token generates"),
            "{text}"
        );
        assert!(text.contains("key usage     by hsmd only"), "{text}");
        assert_eq!(
            token_json(&info)["refusals"][0]["mechanism"],
            "CKM_RSA_PKCS_KEY_PAIR_GEN"
        );
    }
}
