//! Audit records as syslog messages, shared by the daemon (which forwards each record
//! as it is written) and `hsmctl audit export` (which resends a range after an outage),
//! so a receiver gets the same message from both.
//!
//! The message is RFC 5424: facility 13 (log audit), severity 6 (informational), the
//! record's own time, the host name, APP-NAME `hsmd`, no PROCID (it would differ between
//! the daemon and an export), MSGID `audit`, the structured data
//! `[hsmd@32473 seq="N" hash="HEX"]` and, as the message, the record's JSON line exactly
//! as it is in the log (so a SIEM can recompute the hash and follow the chain).
//!
//! Transports: `tcp://HOST:PORT` with octet-counting framing (RFC 6587: `LEN SP MSG`), and
//! `unix:///PATH`, a datagram socket (one message per datagram, like `/dev/log`) or, if
//! the socket is a stream socket, octet-counted as over TCP.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tcp://HOST:PORT`.
    Tcp(String),
    /// `unix:///PATH`.
    Unix(PathBuf),
}

impl Target {
    /// Parses `tcp://HOST:PORT` or `unix:///PATH`; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if ok {
                return Ok(Target::Tcp(addr.to_string()));
            }
            return Err(format!("'{s}': write tcp://HOST:PORT"));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Target::Unix(PathBuf::from(path)));
            }
            return Err(format!(
                "'{s}': write unix:// and an absolute path, e.g. unix:///dev/log"
            ));
        }
        Err(format!(
            "'{s}': write tcp://HOST:PORT or unix:///PATH (e.g. unix:///dev/log)"
        ))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// PRI of every message: facility 13 (log audit) * 8 + severity 6 (informational).
const PRI: u8 = 13 * 8 + 6;
/// SD-ID of the structured data (32473: the example enterprise number of RFC 5612).
pub const SD_ID: &str = "hsmd@32473";

/// The RFC 5424 message of one record: `time`, `seq` and `hash` from the record, `line`
/// its JSON line as written (without the newline).
///
/// The header and structured data take only what they may hold, whatever a (possibly
/// edited) log line gave `hsmctl audit export`: a time that is not an RFC 3339 time
/// becomes `-`, and `"`, `\` and `]` in the hash are escaped (RFC 5424 section 6.3.3), so
/// no field can add a header field or an SD element.
pub fn message(host: &str, time: &str, seq: u64, hash: &str, line: &str) -> String {
    let host = if host.is_empty() { "-" } else { host };
    let time_ok = !time.is_empty()
        && time
            .bytes()
            .all(|b| b.is_ascii_digit() || b"TZ:.+-".contains(&b));
    let time = if time_ok { time } else { "-" };
    let hash = sd_escape(hash);
    format!("<{PRI}>1 {time} {host} hsmd - audit [{SD_ID} seq=\"{seq}\" hash=\"{hash}\"] {line}")
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// This machine's host name as RFC 5424 wants it (printable ASCII, no spaces, at most
/// 255 characters), or `-` if it cannot be read.
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() { "-".into() } else { name }
}

/// An open connection to a syslog receiver. Blocking.
pub enum Connection {
    Tcp(TcpStream),
    UnixStream(UnixStream),
    UnixDatagram(UnixDatagram),
}

impl Connection {
    /// Connects to `target`; writes time out after `timeout`.
    pub fn open(target: &Target, timeout: Duration) -> io::Result<Connection> {
        match target {
            Target::Tcp(addr) => {
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
                for a in std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            s.set_write_timeout(Some(timeout))?;
                            let _ = s.set_nodelay(true);
                            return Ok(Connection::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Target::Unix(path) => {
                let d = UnixDatagram::unbound()?;
                match d.connect(path) {
                    Ok(()) => {
                        d.set_write_timeout(Some(timeout))?;
                        Ok(Connection::UnixDatagram(d))
                    }
                    // EPROTOTYPE: the socket is a stream socket.
                    Err(e) if e.raw_os_error() == Some(91) => {
                        let s = UnixStream::connect(path)?;
                        s.set_write_timeout(Some(timeout))?;
                        Ok(Connection::UnixStream(s))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Sends one message (framed for stream transports).
    pub fn send(&mut self, msg: &str) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.write_all(framed(msg).as_bytes()),
            Connection::UnixStream(s) => s.write_all(framed(msg).as_bytes()),
            Connection::UnixDatagram(d) => d.send(msg.as_bytes()).map(drop),
        }
    }

    /// Flushes what is buffered (nothing is: each send is one write).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.flush(),
            Connection::UnixStream(s) => s.flush(),
            Connection::UnixDatagram(_) => Ok(()),
        }
    }
}

/// RFC 6587 octet counting: the message's length in bytes, a space, the message.
fn framed(msg: &str) -> String {
    format!("{} {msg}", msg.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        assert_eq!(
            Target::parse("tcp://127.0.0.1:6514"),
            Ok(Target::Tcp("127.0.0.1:6514".into()))
        );
        assert_eq!(
            Target::parse("unix:///dev/log"),
            Ok(Target::Unix("/dev/log".into()))
        );
        assert_eq!(
            Target::parse("unix:///dev/log").unwrap().to_string(),
            "unix:///dev/log"
        );
        for bad in [
            "udp://x:1",
            "tcp://x",
            "tcp://:1",
            "unix://dev/log",
            "/dev/log",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn edited_fields_cannot_add_header_fields_or_sd_elements() {
        let m = message(
            "h",
            "2026-01-01T00:00:00Z evilhost",
            7,
            "x\"] [origin@1 ip=\"1.2.3.4",
            "{}",
        );
        assert_eq!(
            m,
            "<110>1 - h hsmd - audit [hsmd@32473 seq=\"7\" hash=\"x\\\"\\] [origin@1 ip=\\\"1.2.3.4\"] {}"
        );
    }

    #[test]
    fn message_has_header_sd_and_the_line() {
        let m = message(
            "h1",
            "2026-01-02T03:04:05.000006Z",
            7,
            "ab12",
            "{\"seq\":7}",
        );
        assert_eq!(
            m,
            "<110>1 2026-01-02T03:04:05.000006Z h1 hsmd - audit [hsmd@32473 seq=\"7\" hash=\"ab12\"] {\"seq\":7}"
        );
        assert_eq!(framed("abc"), "3 abc");
        assert_eq!(framed("é"), "2 é", "octets, not characters");
    }

    #[test]
    fn unix_datagram_and_stream_sockets() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let dgram_path = dir.path().join("dgram");
        let rx = UnixDatagram::bind(&dgram_path).unwrap();
        let target = Target::Unix(dgram_path);
        let mut c = Connection::open(&target, Duration::from_secs(1)).unwrap();
        assert!(matches!(c, Connection::UnixDatagram(_)));
        c.send("one message").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one message", "one datagram, no framing");

        let stream_path = dir.path().join("stream");
        let listener = std::os::unix::net::UnixListener::bind(&stream_path).unwrap();
        let target = Target::Unix(stream_path);
        let mut c = Connection::open(&target, Duration::from_secs(1)).unwrap();
        assert!(matches!(c, Connection::UnixStream(_)));
        c.send("ab").unwrap();
        c.send("cde").unwrap();
        drop(c);
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = String::new();
        peer.read_to_string(&mut got).unwrap();
        assert_eq!(got, "2 ab3 cde", "octet counting on a stream");
    }
}
