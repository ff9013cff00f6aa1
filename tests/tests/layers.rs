//! The layers of the `hsmd` crate point one way: a module names only modules below it.
//! This reads `server/src` and fails on any `crate::...` (or `super::` climbing to the
//! crate root) that names a module of the same or a higher layer, and on an external
//! crate used outside the one layer allowed to name it (cryptoki only in `hsm`, tonic and
//! the proto only in `api` and `server`, rusqlite only in `store`).
//!
//! Modules in one crate rather than crates of their own: the compiler would enforce only
//! crate edges, and six crates would cost link time on every test build. This check
//! enforces every edge, for the price of reading the sources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may name modules of lower layers
/// only; modules of one layer are independent of each other.
const LAYERS: &[&[&str]] = &[
    // leaves: the shared vocabulary, time, and the metrics registry every layer records into
    &["domain", "clock", "metrics"],
    // crypto encodings over the vocabulary (SPKI, ECDSA DER, OAEP)
    &["encoding"],
    // backends: the token, the metadata store, the audit log, identity and policy
    &["hsm", "store", "audit", "auth"],
    // capabilities: the rules
    &["keys"],
    // csr: certificate requests; signing: image signatures (cosign format, policy rules)
    &["csr", "signing"],
    // gRPC services: decode, authorize, call a capability, map errors
    &["api"],
    // assembly: configuration, `hsmd dev`, start-up
    &["config", "dev"],
    // `proptests` and `fuzz`: the parser property tests (test builds only) and fuzz
    // targets (for `fuzz/`), which reach into every layer's parsers, beside the top
    &["server", "proptests", "fuzz"],
];

/// External crates only some top-level modules (or, by path under `server/src`, single
/// files) may name.
const CONFINED: &[(&str, &[&str])] = &[
    ("cryptoki", &["hsm"]),
    ("rusqlite", &["store"]),
    ("tokio_postgres", &["store"]),
    ("deadpool_postgres", &["store"]),
    ("tokio_postgres_rustls", &["store"]),
    ("tonic", &["api", "server"]),
    ("tonic_types", &["api", "server"]),
    ("tonic_health", &["server"]),
    ("tonic_reflection", &["server"]),
    // `domain/reason.rs` re-exports `hsmd_proto::Reason` and nothing else: the stable
    // error reasons are one enum shared with the client, and `keys`/`csr` name each
    // error's reason by type. The rest of `domain` (and every layer below `api`) still
    // may not name the proto crate.
    ("hsmd_proto", &["api", "server", "domain/reason.rs"]),
    ("oci_client", &["signing/registry.rs"]),
    ("reqwest", &["signing/registry.rs"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source with `//` comments removed (doc comments mention modules freely).
fn code_only(src: &str) -> String {
    src.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level module names after each `crate::`, including each item of a
/// `crate::{a::X, b}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `hsmd_crate::`, not our crate
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        start = false;
                        names.push(ident_at(&group[j..]).to_string());
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident_at(trimmed).to_string());
        }
    }
    names
}

/// Top-level modules reached by `super::` chains that climb to the crate root from a
/// file `depth` modules deep (`server.rs` and `keys/mod.rs` are 1, `keys/crypt.rs` 2).
fn super_paths(code: &str, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let before = rest[..i].chars().next_back();
        let mut tail = &rest[i..];
        let mut ups = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            ups += 1;
            tail = t;
        }
        rest = tail;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if ups >= depth {
            names.push(ident_at(tail).to_string());
        }
    }
    names
}

/// Names of external crates used as paths (`cryptoki::...`, `use tonic::{...}`).
fn external_uses(code: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    code.match_indices(&needle).any(|(i, _)| {
        !code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    })
}

/// Checks one file of top-level module `module` at `depth`; returns the violations.
fn check_file(module: &str, depth: usize, file: &str, src: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(own) = layer_of(module) else {
        return vec![format!(
            "{file}: module `{module}` is in no layer; add it to LAYERS in tests/tests/layers.rs"
        )];
    };
    let code = code_only(src);
    let mut named = crate_paths(&code);
    named.extend(super_paths(&code, depth));
    for name in named {
        if name == module || name.is_empty() {
            continue;
        }
        match layer_of(&name) {
            Some(l) if l < own => {}
            Some(l) => problems.push(format!(
                "{file}: `{module}` (layer {own}) names `{name}` (layer {l}): a module names only modules of lower layers"
            )),
            None => problems.push(format!(
                "{file}: names `crate::{name}`, which is in no layer; add it to LAYERS"
            )),
        }
    }
    for (krate, allowed) in CONFINED {
        if !allowed.contains(&module) && !allowed.contains(&file) && external_uses(&code, krate) {
            problems.push(format!(
                "{file}: `{module}` names the crate `{krate}`, allowed only in {allowed:?}"
            ));
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module and depth of a file under `src` (None for the crate roots).
fn module_of(rel: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
    Some((parts[0].clone(), depth))
}

#[test]
fn server_modules_name_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 40,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut problems = Vec::new();
    let mut per_module: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let Some((module, depth)) = module_of(rel) else {
            continue;
        };
        *per_module.entry(module.clone()).or_default() += 1;
        let text = std::fs::read_to_string(path).expect("read source");
        problems.extend(check_file(
            &module,
            depth,
            &rel.display().to_string(),
            &text,
        ));
    }
    for layer in LAYERS {
        for module in *layer {
            assert!(
                per_module.contains_key(*module),
                "LAYERS names `{module}`, which has no file under server/src"
            );
        }
    }
    assert!(
        problems.is_empty(),
        "layer violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_catches_upward_and_sideways_names() {
    let up = "use crate::keys::KeyManager;\n";
    assert_eq!(check_file("hsm", 2, "hsm/x.rs", up).len(), 1, "hsm -> keys");
    let grouped = "use crate::{domain::spec::KeySpec, store::Store};\n";
    assert_eq!(
        check_file("hsm", 1, "hsm/mod.rs", grouped).len(),
        1,
        "hsm -> store"
    );
    assert!(
        check_file("keys", 1, "keys/mod.rs", grouped).is_empty(),
        "keys -> store, domain"
    );
    let climb = "use super::super::api::Call;\n";
    assert_eq!(
        check_file("audit", 2, "audit/writer.rs", climb).len(),
        1,
        "audit -> api"
    );
    let inner = "use super::super::record::X;\n";
    assert!(check_file("audit", 3, "audit/writer/tests.rs", inner).is_empty());
    let proto = "fn f(s: tonic::Status) {}\n";
    assert_eq!(
        check_file("keys", 1, "keys/mod.rs", proto).len(),
        1,
        "tonic below api"
    );
    let reason = "pub use hsmd_proto::Reason;\n";
    assert!(check_file("domain", 1, "domain/reason.rs", reason).is_empty());
    assert_eq!(
        check_file("domain", 1, "domain/spec.rs", reason).len(),
        1,
        "the proto crate in domain outside the one re-export"
    );
    let comment = "// uses crate::api and tonic::Status in prose\n";
    assert!(check_file("domain", 1, "domain/mod.rs", comment).is_empty());
    let unknown = check_file("newthing", 1, "newthing.rs", "");
    assert!(unknown[0].contains("in no layer"), "{unknown:?}");
}
