//! A real OCI registry for the image-signing tests: Debian's `docker-registry` (the CNCF
//! distribution registry) with filesystem storage in a temporary folder and, when asked,
//! a `notifications` endpoint with a bearer secret; images built as OCI layouts (one
//! uncompressed layer made with `tar`) and pushed with `skopeo`; and a small HTTP
//! receiver that keeps what the registry POSTs.
//!
//! `scripts/test` installs `docker-registry` and `skopeo`; a missing one fails the test
//! with the install command.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::ops::try_http_get;
use crate::tools::{self, find_program};

/// The command that installs the registry tools.
pub const REGISTRY_INSTALL_HINT: &str = "install with: apt-get install -y docker-registry skopeo";

/// Panics, naming the install command, unless `docker-registry` and `skopeo` are present.
pub fn require_registry_tools() {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "tar"]
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {}; {REGISTRY_INSTALL_HINT}",
        missing.join(", ")
    );
}

/// Where the registry sends its notifications, and the secret it sends with them.
pub struct Notify {
    pub url: String,
    pub secret: String,
}

/// A `docker-registry serve` on a free loopback port, deletes enabled (hsmd removes a
/// deleted policy's signatures). Stopped on drop.
pub struct Registry {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Writes a config under `dir` (a fresh folder) and starts the registry; returns once
    /// `/v2/` answers.
    pub fn start(dir: &Path, notify: Option<&Notify>) -> Registry {
        require_registry_tools();
        fs::create_dir_all(dir).expect("registry dir");
        let port = tools::free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some(n) = notify {
            config.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: hsmd\n      url: {}\n      \
                 headers:\n        Authorization: [Bearer {}]\n      timeout: 2s\n      \
                 threshold: 3\n      backoff: 1s\n",
                n.url, n.secret
            ));
        }
        tools::write_file(dir, "registry.yml", config.as_bytes());
        let mut r = Registry {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        r.restart();
        r
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and storage; returns once `/v2/` answers.
    pub fn restart(&mut self) {
        self.stop();
        let dir = self.dir.clone();
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("registry.log"))
            .expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn docker-registry: {e}; {REGISTRY_INSTALL_HINT}"));
        self.child = Some(child);
        let r = &*self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Starting, it may refuse, or accept and reset: not ready yet either way.
            if matches!(try_http_get(&r.addr(), "/v2/"), Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 30 s: {}",
                r.addr(),
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A one-image OCI layout on disk, tagged `tag`, with the digest of its manifest.
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
    pub digest: String,
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Builds an OCI layout under `dir` holding one image: a single uncompressed layer
/// (`tar` of one file with `content`), its config and its manifest, tagged `tag`.
/// Different contents make different digests.
pub fn oci_image(dir: &Path, content: &[u8], tag: &str) -> Image {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("layout dir");
    let put = |b: &[u8]| {
        let d = sha256(b);
        fs::write(blobs.join(&d["sha256:".len()..]), b).expect("write blob");
        d
    };
    let files = dir.join("files");
    fs::create_dir_all(&files).expect("files dir");
    fs::write(files.join("content.txt"), content).expect("write content");
    let tar = dir.join("layer.tar");
    tools::run(
        Command::new("tar")
            .args([
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&files)
            .arg("content.txt"),
    )
    .expect_code(0);
    let layer = fs::read(&tar).expect("read layer");
    let layer_digest = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("config json");
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("manifest json");
    let digest = put(&manifest);
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    Image {
        layout,
        tag: tag.to_string(),
        digest,
    }
}

/// Pushes `image` to `registry` as `REPO:TAG` (plain HTTP) with skopeo, byte for byte:
/// without `--preserve-digests` skopeo compresses the layer and the pushed manifest's
/// digest is no longer `image.digest`.
pub fn push(registry: &Registry, image: &Image, repo_and_tag: &str) {
    tools::run(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
            .arg(format!("docker://{}/{repo_and_tag}", registry.addr())),
    )
    .expect_code(0);
}

/// One POST the receiver got: its headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 endpoint on a free loopback port that answers every POST with 200 and
/// keeps it: what the registry itself sends, seen without hsmd in between.
pub struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || serve(conn, &keep));
            }
        });
        Receiver { port, got }
    }

    /// `http://127.0.0.1:PORT/registry/events`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/registry/events", self.port)
    }

    /// Waits until `pred` holds for what was received (at most 30 s); returns it all.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.got.lock().expect("receiver lock").clone();
            if pred(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 30 s; got {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Reads requests off one connection (keep-alive) until it closes.
fn serve(conn: std::net::TcpStream, keep: &Mutex<Vec<Received>>) {
    let mut out = conn.try_clone().expect("clone conn");
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_string());
                if n == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock().expect("receiver lock").push(Received {
            path,
            headers,
            body,
        });
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
