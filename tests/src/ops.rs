//! What operators run next to hsmd, for the metrics and audit forwarding tests: a
//! plain HTTP GET (for `/metrics` and `/healthz`), Prometheus' `promtool`, and a real
//! `rsyslogd` with a private configuration in a temporary folder, receiving on a
//! loopback TCP port and writing every message to a file.
//!
//! The tools come from Debian's `prometheus` and `rsyslog` packages (`scripts/test`
//! installs them); a missing one fails the test with the install command.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::tools::{self, CmdOutput};

/// The command that installs the operations tools.
pub const OPS_INSTALL_HINT: &str = "install with: apt-get install -y prometheus rsyslog";

/// Where Debian's rsyslog package puts the daemon.
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// Panics, naming the install command, unless `promtool` and `rsyslogd` are present.
pub fn require_ops_tools() {
    let mut missing = Vec::new();
    if tools::find_program("promtool").is_none() {
        missing.push("promtool");
    }
    if !Path::new(RSYSLOGD).is_file() && tools::find_program("rsyslogd").is_none() {
        missing.push("rsyslogd");
    }
    assert!(
        missing.is_empty(),
        "missing {}; {OPS_INSTALL_HINT}",
        missing.join(", ")
    );
}

/// `GET http://ADDR/PATH` (HTTP/1.1, connection closed after it): status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// [`http_get`] that says what went wrong instead of panicking (for readiness probes: a
/// server still starting may accept a connection and reset it).
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, path, &[]).map(|r| (r.status, r.body))
}

/// An answer to [`http_request`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The status line and the header lines, as sent.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET http://ADDR/PATH` with extra request `headers` (HTTP/1.1, connection closed
/// after it).
pub fn http_request(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} in {raw:?}"),
        )
    };
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Runs `promtool check metrics` on `text` (its stdin); returns what it said.
pub fn promtool_check(text: &str) -> CmdOutput {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool: {e}; {OPS_INSTALL_HINT}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    CmdOutput {
        command: "promtool check metrics".into(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A private `rsyslogd -n` receiving RFC 5424 over TCP (octet counting) on a loopback
/// port and writing each message's raw text, one per line, to a file. Stopped on drop.
pub struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    /// Writes the config under `dir` (a fresh folder) and starts the receiver on a free
    /// port; returns once the port accepts connections.
    pub fn start(dir: &Path) -> Rsyslog {
        require_ops_tools();
        fs::create_dir_all(dir.join("work")).expect("rsyslog work dir");
        let mut r = Rsyslog {
            dir: dir.to_path_buf(),
            port: tools::free_port(),
            child: None,
        };
        r.launch();
        r
    }

    /// `tcp://127.0.0.1:PORT`, for `[audit.forward] syslog` and `--syslog`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The file the messages go to.
    pub fn output(&self) -> PathBuf {
        self.dir.join("received.log")
    }

    /// Everything received so far.
    pub fn received(&self) -> String {
        fs::read_to_string(self.output()).unwrap_or_default()
    }

    fn config(&self) -> String {
        format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\")\n\
             module(load=\"imtcp\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
            work = self.dir.join("work").display(),
            port = self.port,
            out = self.output().display(),
        )
    }

    fn launch(&mut self) {
        let conf = self.dir.join("rsyslog.conf");
        fs::write(&conf, self.config()).expect("write rsyslog.conf");
        let log = fs::File::create(self.dir.join("rsyslogd.stderr")).expect("rsyslog stderr");
        let program = if Path::new(RSYSLOGD).is_file() {
            PathBuf::from(RSYSLOGD)
        } else {
            PathBuf::from("rsyslogd")
        };
        let child = Command::new(program)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn rsyslogd: {e}; {OPS_INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "rsyslogd exited with {status}:\n{}",
                    fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the receiver (SIGTERM, then waits: it flushes its file first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::daemon::terminate(&child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and file.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every `seq="N"` in the structured data of the messages in `text`.
pub fn forwarded_seqs(text: &str) -> std::collections::BTreeSet<u64> {
    text.lines()
        .filter_map(|l| l.split_once("[hsmd@32473 seq=\""))
        .filter_map(|(_, rest)| rest.split('"').next()?.parse().ok())
        .collect()
}
