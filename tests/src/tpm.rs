//! The TPM token (`hsmd dev --token tpm`): tpm2-pkcs11 on swtpm behind a private D-Bus
//! and tpm2-abrmd, all started by the daemon under `DIR/tpm`. Other programs reach the
//! same token through the variables the daemon writes to `DIR/tpm/env`.

use std::{
    fs,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Instance,
    pkcs11::{DEV_TOKEN_LABEL, P11Object, parse_objects},
    tools::{CmdOutput, run_unchecked},
};

/// The `hsmd dev` arguments that select the TPM token.
pub const TPM_ARGS: [&str; 2] = ["--token", "tpm"];

impl Instance {
    /// True when the data folder holds a TPM token (`hsmd dev --token tpm`).
    pub fn is_tpm(&self) -> bool {
        self.data_dir().join("tpm/env").is_file()
    }

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

/// swtpm and tpm2-abrmd started again by a test, on the daemon's ports, state and D-Bus;
/// dropping it stops them (only these two processes).
pub struct TpmProcesses {
    children: Vec<Child>,
}

impl Drop for TpmProcesses {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Instance {
    /// Kills the daemon's swtpm and tpm2-abrmd (SIGKILL, by the pids in `DIR/tpm/env`;
    /// its private D-Bus stays) and waits until swtpm's ports are free.
    pub fn kill_tpm_processes(&self) {
        for var in ["HSMD_TPM_TPM2_ABRMD_PID", "HSMD_TPM_SWTPM_PID"] {
            let pid: libc::pid_t = self.tpm_var(var).parse().expect("pid");
            // SAFETY: kill(2) on a pid the daemon wrote for a process it started and
            // has not reaped (it reaps only when it stops).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let port: u16 = self.tpm_var("HSMD_TPM_PORT").parse().expect("port");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", port)).is_err()
            || TcpListener::bind(("127.0.0.1", port + 1)).is_err()
        {
            assert!(Instant::now() < deadline, "swtpm's ports stay taken");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts swtpm and tpm2-abrmd again as the daemon did, on the same TPM state,
    /// ports and D-Bus, and waits until tpm2-abrmd is on the bus.
    pub fn start_tpm_processes(&self) -> TpmProcesses {
        let port: u16 = self.tpm_var("HSMD_TPM_PORT").parse().expect("port");
        let state = self.data_dir().join("tpm/state");
        let swtpm = hsmd::dev::swtpm_command(&state, port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swtpm");
        let mut procs = TpmProcesses {
            children: vec![swtpm],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen again");
            std::thread::sleep(Duration::from_millis(50));
        }
        let env = self.tpm_env();
        let abrmd = hsmd::dev::abrmd_command(port)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tpm2-abrmd");
        procs.children.push(abrmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hsmd::dev::abrmd_ready(&env) {
            assert!(Instant::now() < deadline, "tpm2-abrmd not on the bus again");
            std::thread::sleep(Duration::from_millis(50));
        }
        procs
    }
}
