//! Looking into the daemon's token with OpenSC's `pkcs11-tool`, an independent PKCS#11
//! program, through the daemon's own `DIR/softhsm2.conf`.

use std::{collections::BTreeMap, path::Path, process::Command};

use crate::{
    Instance,
    tools::{CmdOutput, run_unchecked, softhsm_module},
};

/// The token label `hsmd dev` provisions.
pub const DEV_TOKEN_LABEL: &str = "hsmd-dev";

/// One object as `pkcs11-tool --list-objects` prints it.
#[derive(Debug, Clone)]
pub struct P11Object {
    /// The header line, e.g. "Private Key Object; EC".
    pub header: String,
    /// `label`, `ID`, `Usage`, `Access`... as printed (trimmed).
    pub fields: BTreeMap<String, String>,
}

impl P11Object {
    /// A printed field, or "".
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }

    /// True for "Private Key Object; ..." entries.
    pub fn is_private_key(&self) -> bool {
        self.header.starts_with("Private Key Object")
    }

    /// True for "Public Key Object; ..." entries.
    pub fn is_public_key(&self) -> bool {
        self.header.starts_with("Public Key Object")
    }

    /// The comma-separated words of a field ("sign", "never extractable"...).
    pub fn words(&self, name: &str) -> Vec<String> {
        self.field(name)
            .split(',')
            .map(|w| w.trim().to_owned())
            .filter(|w| !w.is_empty())
            .collect()
    }
}

/// Parses the output of `pkcs11-tool --list-objects`.
pub fn parse_objects(text: &str) -> Vec<P11Object> {
    let mut objects: Vec<P11Object> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            objects.push(P11Object {
                header: line.trim().to_owned(),
                fields: BTreeMap::new(),
            });
        } else if let (Some(obj), Some((name, value))) = (objects.last_mut(), line.split_once(':'))
        {
            obj.fields
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }
    objects
}

/// The CKA_ID hsmd gives a key: the 16 bytes of its UUID, as pkcs11-tool prints them.
pub fn key_id_hex(key_id: &str) -> String {
    let uuid = uuid::Uuid::parse_str(key_id)
        .unwrap_or_else(|e| panic!("key id {key_id:?} is not a UUID: {e}"));
    hex::encode(uuid.as_bytes())
}

impl Instance {
    /// Runs `pkcs11-tool --module SOFTHSM --token-label hsmd-dev [--login --pin PIN] ARGS`
    /// with `SOFTHSM2_CONF=DIR/softhsm2.conf`.
    /// On a TPM dev folder (`hsmd dev --token tpm`) it runs on the TPM token instead.
    pub fn pkcs11_tool(&self, login: bool, args: &[&str]) -> CmdOutput {
        if self.is_tpm() {
            return self.tpm_pkcs11_tool(login, args);
        }
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("SOFTHSM2_CONF", self.data_dir().join("softhsm2.conf"))
            .arg("--module")
            .arg(softhsm_module())
            .args(["--token-label", DEV_TOKEN_LABEL]);
        if login {
            cmd.args(["--login", "--pin"]).arg(self.pin());
        }
        cmd.args(args).current_dir(self.scratch());
        run_unchecked(&mut cmd)
    }

    /// Every object pkcs11-tool sees in the token (after login when `login`).
    pub fn token_objects(&self, login: bool) -> Vec<P11Object> {
        let out = self.pkcs11_tool(login, &["--list-objects"]);
        assert!(
            out.success(),
            "pkcs11-tool --list-objects failed\n{}",
            out.describe()
        );
        parse_objects(&out.stdout)
    }

    /// The objects of one key (labelled with its id), after login.
    pub fn objects_of(&self, key_id: &str) -> Vec<P11Object> {
        self.token_objects(true)
            .into_iter()
            .filter(|o| o.field("label") == key_id)
            .collect()
    }

    /// Runs the `p11probe` binary (path given by the test) against the token.
    pub fn p11probe(&self, probe: &Path, key_ids: &[&str]) -> serde_json::Value {
        let mut cmd = Command::new(probe);
        if self.is_tpm() {
            cmd.envs(self.tpm_env())
                .arg(self.tpm_var("HSMD_TPM_MODULE"));
        } else {
            cmd.env("SOFTHSM2_CONF", self.data_dir().join("softhsm2.conf"))
                .arg(softhsm_module());
        }
        cmd.arg(DEV_TOKEN_LABEL)
            .arg(self.data_dir().join("pin"))
            .args(key_ids);
        let out = run_unchecked(&mut cmd);
        assert!(out.success(), "p11probe failed\n{}", out.describe());
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("p11probe printed no JSON ({e})\n{}", out.describe()))
    }
}
