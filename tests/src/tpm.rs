//! The TPM token (`hsmd dev --token tpm`): tpm2-pkcs11 on swtpm behind a private D-Bus
//! and tpm2-abrmd, all started by the daemon under `DIR/tpm`. Other programs reach the
//! same token through the variables the daemon writes to `DIR/tpm/env`.

use std::{fs, process::Command};

use crate::{
    Instance,
    pkcs11::{DEV_TOKEN_LABEL, P11Object, parse_objects},
    tools::{CmdOutput, run_unchecked},
};

/// The `hsmd dev` arguments that select the TPM token.
pub const TPM_ARGS: [&str; 2] = ["--token", "tpm"];

impl Instance {
    /// `DIR/tpm/env` as (name, value) pairs: the D-Bus address, the tpm2-pkcs11 TCTI
    /// and store, the module path (`HSMD_TPM_MODULE`) and the token's process ids.
    pub fn tpm_env(&self) -> Vec<(String, String)> {
        let path = self.data_dir().join("tpm/env");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e} (not a TPM dev folder?)", path.display()));
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect()
    }

    /// One value of [`Instance::tpm_env`].
    pub fn tpm_var(&self, name: &str) -> String {
        self.tpm_env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} not in DIR/tpm/env"))
    }

    /// Runs `pkcs11-tool --module <tpm2-pkcs11> --token-label hsmd-dev [--login --pin
    /// PIN] ARGS` in the TPM token's environment.
    pub fn tpm_pkcs11_tool(&self, login: bool, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.envs(self.tpm_env())
            .arg("--module")
            .arg(self.tpm_var("HSMD_TPM_MODULE"))
            .args(["--token-label", DEV_TOKEN_LABEL]);
        if login {
            cmd.args(["--login", "--pin"]).arg(self.pin());
        }
        cmd.args(args).current_dir(self.scratch());
        run_unchecked(&mut cmd)
    }

    /// Every object pkcs11-tool sees in the TPM token after login.
    pub fn tpm_objects(&self) -> Vec<P11Object> {
        let out = self.tpm_pkcs11_tool(true, &["--list-objects"]);
        assert!(
            out.success(),
            "pkcs11-tool --list-objects on the TPM token failed\n{}",
            out.describe()
        );
        parse_objects(&out.stdout)
    }
}
