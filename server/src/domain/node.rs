//! A replica's node id (`node_id`): it names the replica's audit folder
//! (`DIR/audit/NAME/`) and is written in each of its audit records, so it must be a
//! safe file name: 1 to 63 letters, digits, '-', '_' or '.', not starting with '.'.
//! The default is the host name.

/// The node id `raw` or, when not given, the host name; an error says what is wrong.
pub fn node_id(raw: Option<String>) -> Result<String, String> {
    let id = raw.unwrap_or_else(host_name);
    let ok = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(id)
    } else {
        Err(format!(
            "'{id}' must be 1 to 63 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// The host name (`hsmd` if it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hsmd".into())
}

#[cfg(test)]
mod tests {
    use super::node_id;

    #[test]
    fn node_ids_are_safe_folder_names() {
        assert_eq!(node_id(Some("a-1.b_2".into())).unwrap(), "a-1.b_2");
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(64)] {
            assert!(node_id(Some(bad.to_string())).is_err(), "{bad:?}");
        }
        assert!(node_id(None).is_ok(), "the host name");
    }
}
