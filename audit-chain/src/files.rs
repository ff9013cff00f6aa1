//! Which files make up a log and in what order.
//!
//! The current file is `audit.log` (its name comes from the config); when it grows past
//! the configured size it is renamed `audit.log.NNNNNNNNNNNN`, where the number is the
//! sequence of its first record, zero-padded so names sort like numbers. A torn last
//! line found at start-up is moved aside to `audit.log.torn-TIME`, which is not part of
//! the chain.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Digits of the sequence number in a rotated file's name.
const SEQ_DIGITS: usize = 12;

/// Name of the file the current log is renamed to when its first record is `first_seq`.
pub fn rotated_name(current: &Path, first_seq: u64) -> PathBuf {
    let mut name = current.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first_seq:0SEQ_DIGITS$}"));
    current.with_file_name(name)
}

/// First sequence number of a rotated file, from its name (`None` for other files).
pub fn rotated_seq(current: &Path, candidate: &Path) -> Option<u64> {
    let base = current.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let digits = name.strip_prefix(base)?.strip_prefix('.')?;
    if digits.len() == SEQ_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Every file of the log whose current file is `current`: rotated files oldest first,
/// then the current file if it exists.
pub fn log_files(current: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match current.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut rotated = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let path = dir.join(e?.file_name());
                if let Some(seq) = rotated_seq(current, &path) {
                    rotated.push((seq, path));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        files.push(current.to_path_buf());
    }
    Ok(files)
}

/// Files named on a command line, in chain order: a folder stands for its `audit.log*`
/// files (torn lines moved aside are left out); files are ordered by the sequence
/// number of their first record, so `audit/*` works whatever the shell's order.
pub fn expand(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in std::fs::read_dir(p)? {
                let name = e?.file_name();
                let text = name.to_string_lossy();
                if text.starts_with("audit.log") && !text.contains(".torn-") {
                    files.push(p.join(&name));
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut keyed = Vec::with_capacity(files.len());
    for f in files {
        keyed.push((first_seq(&f)?.unwrap_or(u64::MAX), f));
    }
    keyed.sort();
    keyed.dedup_by(|a, b| a.1 == b.1);
    Ok(keyed.into_iter().map(|(_, f)| f).collect())
}

/// The chains among `paths`, each named and with its files in order ([`expand`]): a
/// folder holding log files is one chain named after the folder; a folder holding
/// none, but folders that do, is a cluster's audit folder (`DIR/audit/NODE/` per
/// replica), one chain per sub-folder, named after it; files named one by one are one
/// chain with no name. Chains come sorted by name.
pub fn chains(paths: &[PathBuf]) -> std::io::Result<Vec<(String, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    let mut loose = Vec::new();
    for p in paths {
        if !p.is_dir() {
            loose.push(p.clone());
            continue;
        }
        let direct = expand(std::slice::from_ref(p))?;
        if !direct.is_empty() {
            out.push((folder_name(p), direct));
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|s| s.is_dir())
            .collect();
        subs.sort();
        for s in subs {
            let files = expand(std::slice::from_ref(&s))?;
            if !files.is_empty() {
                out.push((folder_name(&s), files));
            }
        }
    }
    if !loose.is_empty() {
        out.push((String::new(), expand(&loose)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn folder_name(p: &Path) -> String {
    p.canonicalize()
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| p.display().to_string())
}

/// Sequence number of a file's first readable record.
fn first_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    for line in BufReader::new(file).take(1 << 24).lines() {
        let Ok(line) = line else { return Ok(None) };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(seq) = v.get("seq").and_then(|s| s.as_u64())
        {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_like_numbers() {
        let cur = Path::new("/var/log/hsmd/audit.log");
        let a = rotated_name(cur, 9);
        let b = rotated_name(cur, 10);
        assert_eq!(a, Path::new("/var/log/hsmd/audit.log.000000000009"));
        assert!(a < b);
        assert_eq!(rotated_seq(cur, &b), Some(10));
        assert_eq!(rotated_seq(cur, Path::new("/x/audit.log.torn-1")), None);
        assert_eq!(rotated_seq(cur, cur), None);
    }

    #[test]
    fn folders_expand_in_chain_order() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join("audit.log");
        std::fs::write(&cur, "{\"seq\":21}\n").unwrap();
        std::fs::write(rotated_name(&cur, 1), "{\"seq\":1}\n").unwrap();
        std::fs::write(rotated_name(&cur, 11), "{\"seq\":11}\n").unwrap();
        std::fs::write(dir.path().join("audit.log.torn-x"), "{\"se").unwrap();
        let files = expand(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.log.000000000001",
                "audit.log.000000000011",
                "audit.log"
            ]
        );
        assert_eq!(log_files(&cur).unwrap(), files);
    }
}
