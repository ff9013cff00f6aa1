//! `hsmd dev`: everything a newcomer needs under one data folder. A SoftHSM2 token with
//! its own softhsm2.conf (installing SoftHSM2 with apt-get if it is missing), a PIN file
//! (0600), a local CA with server and client certificates, a config whose policy lets
//! the local client do everything, and (once the listener is bound) the client profile that
//! `hsmctl` finds on its own. Reuses what is already there. `certs` makes the local PKI.

mod certs;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "hsmd-dev";
/// Principal of the dev client certificate.
pub const DEV_PRINCIPAL: &str = "spiffe://hsmd.dev/admin";
/// Where Debian and others put the SoftHSM2 module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
const SOFTHSM2_CONF_TEMPLATE: &str = include_str!("../../../softhsm/softhsm2.conf.template");

/// The default dev data folder: `$XDG_DATA_HOME/hsmd/dev`, else
/// `$HOME/.local/share/hsmd/dev`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hsmd/dev")
}

/// Provisions (or reuses) `dir` and returns the path of its `hsmd.toml`. Must run
/// before any thread starts: it sets SOFTHSM2_CONF for this process.
pub fn provision(dir: &Path, listen: &str) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir.join("tokens")).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let module = ensure_softhsm()?;
    let conf = dir.join("softhsm2.conf");
    let text =
        SOFTHSM2_CONF_TEMPLATE.replace("@TOKENDIR@", &dir.join("tokens").display().to_string());
    fs::write(&conf, text)?;
    // SAFETY: called from main before the runtime or any other thread exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let pin_file = dir.join("pin");
    if !pin_file.exists() {
        init_token(&module, &pin_file)?;
    }
    certs::ensure(&dir.join("tls"), DEV_PRINCIPAL)?;
    let config = dir.join("hsmd.toml");
    fs::write(&config, config_text(&dir, &module, listen))?;
    Ok(config)
}

fn config_text(dir: &Path, module: &Path, listen: &str) -> String {
    let d = dir.display();
    format!(
        "# Written by `hsmd dev`; rewritten at each start.\n\
         listen = \"{listen}\"\n\n\
         [hsm]\nmodule = \"{}\"\ntoken_label = \"{DEV_TOKEN_LABEL}\"\npin_file = \"{d}/pin\"\n\
         softhsm2_conf = \"{d}/softhsm2.conf\"\n\n\
         [store]\npath = \"{d}/hsmd.db\"\n\n\
         [audit]\npath = \"{d}/audit/audit.log\"\n\n\
         [tls]\ncert = \"{d}/tls/server.pem\"\nkey = \"{d}/tls/server.key\"\nclient_ca = \"{d}/tls/ca.pem\"\n\n\
         # The local client may do everything on every key.\n\
         [[policy.rules]]\nprincipals = [\"{DEV_PRINCIPAL}\"]\nactions = [\"*\"]\nkeys = [\"*\"]\n",
        module.display()
    )
}

/// Writes the client profile once the listener is bound, and prints where it is.
pub fn write_profile(dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let d = dir.display();
    let profile = format!(
        "# Written by `hsmd dev` for hsmctl and hsm-client.\n\
         endpoint = \"https://{addr}\"\nserver_name = \"localhost\"\n\
         ca_cert = \"{d}/tls/ca.pem\"\nclient_cert = \"{d}/tls/client.pem\"\nclient_key = \"{d}/tls/client.key\"\n"
    );
    let path = dir.join("client.toml");
    let tmp = dir.join("client.toml.tmp");
    fs::write(&tmp, profile)?;
    fs::rename(&tmp, &path)?;
    println!(
        "hsmd dev listening on https://{addr}; client profile {}",
        path.display()
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Finds the SoftHSM2 module, installing the Debian packages when it is missing.
fn ensure_softhsm() -> anyhow::Result<PathBuf> {
    if let Some(m) = find_module() {
        return Ok(m);
    }
    eprintln!("hsmd dev: SoftHSM2 is not installed; installing softhsm2 and opensc with apt-get");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            Command::new("sudo")
        };
        if !root {
            cmd.arg("apt-get");
        }
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            _ => bail!(
                "could not install SoftHSM2; run: sudo apt-get update && sudo apt-get install -y softhsm2 opensc"
            ),
        }
    };
    apt(&["update"])?;
    apt(&["install", "-y", "softhsm2", "opensc"])?;
    find_module().context("softhsm2 installed but libsofthsm2.so not found")
}

fn find_module() -> Option<PathBuf> {
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Initializes a fresh token in the first free slot and sets its user PIN.
fn init_token(module: &Path, pin_file: &Path) -> anyhow::Result<()> {
    let pin = random_pin();
    let so_pin = random_pin();
    crate::hsm::provision::init_token(module, DEV_TOKEN_LABEL, &so_pin, &pin)
        .context("initialize the dev token")?;
    write_secret(pin_file, pin.expose_secret())?;
    write_secret(&pin_file.with_file_name("so-pin"), so_pin.expose_secret())?;
    Ok(())
}

fn random_pin() -> SecretString {
    SecretString::from(uuid::Uuid::new_v4().simple().to_string())
}

/// Writes a file readable by its owner only (0600).
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}
