//! Running external programs (openssl, pkcs11-tool, hsmctl) and finding the binaries
//! under test.
//!
//! A failed tool run panics with its command line, exit status, stdout and stderr, so a
//! failing test says exactly which step broke.

use std::{
    env,
    ffi::OsStr,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The command that installs every external tool the tests need.
pub const INSTALL_HINT: &str = "install with: apt-get install -y softhsm2 opensc openssl";

/// Where Debian's softhsm2 package puts the PKCS#11 module; `E2E_PKCS11_MODULE`
/// overrides it.
pub fn softhsm_module() -> PathBuf {
    env::var_os("E2E_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// Panics, naming the install command, unless SoftHSM2, pkcs11-tool and openssl are
/// present. Tests call this instead of skipping: a missing token is a failure.
pub fn require_tools() {
    let mut missing: Vec<String> = ["softhsm2-util", "pkcs11-tool", "openssl"]
        .iter()
        .filter(|tool| find_on_path(tool).is_none())
        .map(|tool| tool.to_string())
        .collect();
    let module = softhsm_module();
    if !module.is_file() {
        missing.push(module.display().to_string());
    }
    assert!(
        missing.is_empty(),
        "missing {}; {INSTALL_HINT}",
        missing.join(", ")
    );
}

/// The first `program` on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    find_on_path(program)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Path of a workspace binary (`hsmd`, `hsmctl`) next to the running test executable:
/// `target/<profile>/deps/<test>` -> `target/<profile>/<name>`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a folder");
    let profile_dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins --lib` first",
        bin.display()
    );
    bin
}

/// What a finished program printed and how it exited.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// True when the program exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A readable account of the run, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "command: {}", self.command);
        let _ = writeln!(s, "exit code: {:?}", self.code);
        let _ = writeln!(s, "stdout:\n{}", self.stdout);
        let _ = write!(s, "stderr:\n{}", self.stderr);
        s
    }

    /// Panics unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }
}

fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a program with no stdin and returns its output, whatever its exit code.
pub fn run_unchecked(cmd: &mut Command) -> CmdOutput {
    let command = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}; {INSTALL_HINT}"));
    CmdOutput {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a program and panics, with its stderr, unless it exits with status 0.
pub fn run(cmd: &mut Command) -> CmdOutput {
    let out = run_unchecked(cmd);
    assert!(out.success(), "command failed\n{}", out.describe());
    out
}

/// Runs `openssl` with these arguments; panics, with its stderr, unless it succeeds.
pub fn openssl<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("openssl").args(args))
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Builds a `Vec<OsString>` of command arguments from strings and paths alike:
/// `args!["sign", key_id, "--in", msg_path]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        vec![$(::std::ffi::OsString::from(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$arg))),*]
    };
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`), or
/// None if the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for `hsmd serve` configs (which,
/// unlike `hsmd dev`, write no profile to learn a port-0 address from).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
