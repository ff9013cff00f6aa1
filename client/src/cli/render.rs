//! How API messages look on the terminal: JSON objects for `-o json` (enums by proto
//! name, times in RFC 3339, bytes in base64) and tables for people.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hsm_client::names::{name_of, names_of};
use hsm_client::v1::{
    Alias, EncryptionAlgorithm, GetPublicKeyResponse, KeyMetadata, KeyOrigin, KeySpec, KeyState,
    KeyUsage, SigningAlgorithm,
};
use serde_json::{Value, json};

use super::args::format_timestamp;
use super::table::{Table, cell, or_dash};

/// A key's metadata as a JSON object.
pub fn key_json(k: &KeyMetadata) -> Value {
    json!({
        "key_id": k.key_id,
        "spec": name_of::<KeySpec>(k.spec),
        "usage": name_of::<KeyUsage>(k.usage),
        "origin": name_of::<KeyOrigin>(k.origin),
        "state": name_of::<KeyState>(k.state),
        "description": k.description,
        "tags": k.tags,
        "aliases": k.aliases,
        "create_time": format_timestamp(k.create_time.as_ref()),
        "deletion_time": format_timestamp(k.deletion_time.as_ref()),
        "destroy_time": format_timestamp(k.destroy_time.as_ref()),
        "created_by": k.created_by,
        "signing_algorithms": names_of::<SigningAlgorithm>(&k.signing_algorithms),
        "encryption_algorithms": names_of::<EncryptionAlgorithm>(&k.encryption_algorithms),
        "import_time": format_timestamp(k.import_time.as_ref()),
        "valid_to": format_timestamp(k.valid_to.as_ref()),
        "key_check_value": (!k.key_check_value.is_empty()).then_some(&k.key_check_value),
        "current_version": k.current_version,
        "versions": k.versions.iter().map(|v| json!({
            "version": v.version,
            "create_time": format_timestamp(v.create_time.as_ref()),
        })).collect::<Vec<_>>(),
        "rotation_period_days": (k.rotation_period_days != 0).then_some(k.rotation_period_days),
        "next_rotation_time": format_timestamp(k.next_rotation_time.as_ref()),
    })
}

/// A key's metadata as a `field  value` listing.
pub fn key_table(k: &KeyMetadata) -> String {
    let mut tags: Vec<String> = k.tags.iter().map(|(t, v)| format!("{t}={v}")).collect();
    tags.sort();
    let mut t = Table::plain();
    t.row(["key_id", k.key_id.as_str()]);
    t.row(["spec".into(), name_of::<KeySpec>(k.spec)]);
    t.row(["usage".into(), name_of::<KeyUsage>(k.usage)]);
    t.row(["origin".into(), name_of::<KeyOrigin>(k.origin)]);
    t.row(["state".into(), name_of::<KeyState>(k.state)]);
    t.row(["aliases".into(), or_dash(k.aliases.join(", "))]);
    t.row(["description".into(), or_dash(cell(&k.description))]);
    t.row(["tags".into(), or_dash(cell(&tags.join(", ")))]);
    t.row(["created".into(), time_cell(k.create_time.as_ref())]);
    t.row(["created_by".into(), or_dash(k.created_by.as_str())]);
    if k.deletion_time.is_some() {
        t.row(["deletion_time".into(), time_cell(k.deletion_time.as_ref())]);
    }
    if k.destroy_time.is_some() {
        t.row(["destroy_time".into(), time_cell(k.destroy_time.as_ref())]);
    }
    if k.import_time.is_some() {
        t.row(["import_time".into(), time_cell(k.import_time.as_ref())]);
    }
    if k.valid_to.is_some() {
        t.row(["valid_to".into(), time_cell(k.valid_to.as_ref())]);
    }
    if !k.key_check_value.is_empty() {
        t.row(["key_check_value", k.key_check_value.as_str()]);
    }
    if k.versions.len() > 1 || k.rotation_period_days != 0 {
        t.row(["current_version".into(), k.current_version.to_string()]);
        for v in &k.versions {
            let name = format!("version {}", v.version);
            t.row([name, time_cell(v.create_time.as_ref())]);
        }
    }
    if k.rotation_period_days != 0 {
        let every = format!("every {} days", k.rotation_period_days);
        t.row(["rotation".into(), every]);
        t.row([
            "next_rotation".into(),
            time_cell(k.next_rotation_time.as_ref()),
        ]);
    }
    let algorithms = names_of::<SigningAlgorithm>(&k.signing_algorithms).join(", ");
    t.row(["signing_algorithms".into(), or_dash(algorithms)]);
    let algorithms = names_of::<EncryptionAlgorithm>(&k.encryption_algorithms).join(", ");
    t.row(["encryption_algorithms".into(), or_dash(algorithms)]);
    t.render()
}

/// Many keys as a table, one line each.
pub fn keys_table(keys: &[KeyMetadata]) -> String {
    let mut t = Table::new(&["KEY ID", "SPEC", "USAGE", "STATE", "ALIASES", "CREATED"]);
    for k in keys {
        t.row([
            k.key_id.clone(),
            name_of::<KeySpec>(k.spec),
            name_of::<KeyUsage>(k.usage),
            name_of::<KeyState>(k.state),
            or_dash(k.aliases.join(",")),
            time_cell(k.create_time.as_ref()),
        ]);
    }
    t.render()
}

/// An alias as a JSON object.
pub fn alias_json(a: &Alias) -> Value {
    json!({
        "alias_name": a.alias_name,
        "target_key_id": a.target_key_id,
        "create_time": format_timestamp(a.create_time.as_ref()),
        "update_time": format_timestamp(a.update_time.as_ref()),
    })
}

/// Aliases as a table, one line each.
pub fn aliases_table(aliases: &[Alias]) -> String {
    let mut t = Table::new(&["ALIAS", "KEY ID", "CREATED", "UPDATED"]);
    for a in aliases {
        t.row([
            a.alias_name.clone(),
            a.target_key_id.clone(),
            time_cell(a.create_time.as_ref()),
            time_cell(a.update_time.as_ref()),
        ]);
    }
    t.render()
}

/// A public key as a JSON object (DER in base64).
pub fn public_key_json(p: &GetPublicKeyResponse) -> Value {
    json!({
        "key_id": p.key_id,
        "spec": name_of::<KeySpec>(p.spec),
        "usage": name_of::<KeyUsage>(p.usage),
        "public_key_pem": p.public_key_pem,
        "public_key_der_base64": BASE64.encode(&p.public_key_der),
        "signing_algorithms": names_of::<SigningAlgorithm>(&p.signing_algorithms),
        "encryption_algorithms": names_of::<EncryptionAlgorithm>(&p.encryption_algorithms),
    })
}

/// Bytes in base64, for JSON output.
pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A timestamp for a table cell: RFC 3339 or `-`.
pub fn time_cell(ts: Option<&prost_types::Timestamp>) -> String {
    or_dash(format_timestamp(ts).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyMetadata {
        KeyMetadata {
            key_id: "k1".into(),
            spec: KeySpec::EcP256 as i32,
            usage: KeyUsage::SignVerify as i32,
            state: KeyState::Enabled as i32,
            aliases: vec!["alias/a".into()],
            create_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            signing_algorithms: vec![SigningAlgorithm::EcdsaSha256 as i32],
            ..Default::default()
        }
    }

    #[test]
    fn key_json_uses_names_and_rfc3339() {
        let v = key_json(&key());
        assert_eq!(v["spec"], "EC_P256");
        assert_eq!(v["origin"], "KEY_ORIGIN_UNSPECIFIED");
        assert_eq!(v["create_time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["deletion_time"], Value::Null);
        assert_eq!(v["signing_algorithms"][0], "ECDSA_SHA_256");
    }

    #[test]
    fn imported_keys_show_origin_times_and_check_value() {
        let mut k = key();
        assert_eq!(key_json(&k)["valid_to"], Value::Null);
        assert_eq!(key_json(&k)["key_check_value"], Value::Null);
        assert!(!key_table(&k).contains("import_time"));
        k.origin = KeyOrigin::External as i32;
        k.state = KeyState::PendingImport as i32;
        k.import_time = Some(prost_types::Timestamp {
            seconds: 60,
            nanos: 0,
        });
        k.valid_to = Some(prost_types::Timestamp {
            seconds: 3600,
            nanos: 0,
        });
        k.key_check_value = "A1B2C3".into();
        let v = key_json(&k);
        assert_eq!(v["origin"], "EXTERNAL");
        assert_eq!(v["state"], "PENDING_IMPORT");
        assert_eq!(v["import_time"], "1970-01-01T00:01:00Z");
        assert_eq!(v["valid_to"], "1970-01-01T01:00:00Z");
        assert_eq!(v["key_check_value"], "A1B2C3");
        let text = key_table(&k);
        for line in [
            "origin                 EXTERNAL",
            "state                  PENDING_IMPORT",
            "import_time            1970-01-01T00:01:00Z",
            "valid_to               1970-01-01T01:00:00Z",
            "key_check_value        A1B2C3",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn keys_table_has_one_line_per_key() {
        let text = keys_table(&[key()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("KEY ID  SPEC     USAGE"), "{text}");
        assert!(
            lines[1].starts_with("k1      EC_P256  SIGN_VERIFY  ENABLED"),
            "{text}"
        );
    }
}
