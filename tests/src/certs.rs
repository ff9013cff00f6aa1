//! Client certificates made with the openssl CLI: a rogue CA, and leaf certificates
//! with a chosen SAN URI signed by any CA (including the daemon's own dev CA).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::tools::{run, write_file};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

fn load(cert_path: PathBuf, key_path: PathBuf) -> CertKey {
    CertKey {
        cert_pem: fs::read(&cert_path).expect("read cert"),
        key_pem: fs::read(&key_path).expect("read key"),
        cert_path,
        key_path,
    }
}

/// A self-signed CA unknown to the daemon, in `dir/<name>-ca.{pem,key}`.
pub fn make_ca(dir: &Path, name: &str) -> CertKey {
    let cert = dir.join(format!("{name}-ca.pem"));
    let key = dir.join(format!("{name}-ca.key"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj"])
        .arg(format!("/CN={name} CA"))
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    load(cert, key)
}

/// A TLS client certificate with subject CN `name` and, if given, SAN URI `san_uri`,
/// signed by the CA in `ca_cert`/`ca_key`, written to `dir/<name>.{pem,key}`. Writes
/// nothing next to the CA.
pub fn issue_client_cert(
    dir: &Path,
    name: &str,
    ca_cert: &Path,
    ca_key: &Path,
    san_uri: Option<&str>,
) -> CertKey {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = write_file(
        dir,
        &format!("{name}.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n{}",
            san_uri
                .map(|uri| format!("subjectAltName=URI:{uri}\n"))
                .unwrap_or_default()
        )
        .as_bytes(),
    );
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-out"])
        .arg(&key));
    run(Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(&key)
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-out")
        .arg(&csr));
    // An explicit serial, so openssl writes no serial file next to the daemon's CA.
    let serial = format!("0x{}", hex::encode(uuid::Uuid::new_v4().as_bytes()));
    run(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(ca_cert)
        .arg("-CAkey")
        .arg(ca_key)
        .arg("-set_serial")
        .arg(serial)
        .args(["-days", "2", "-sha256", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    load(cert, key)
}

impl crate::Instance {
    /// A client certificate issued by the daemon's own dev CA (`DIR/tls/ca.pem` and
    /// `ca.key`), so TLS accepts it and only hsmd's policy decides.
    pub fn issue_from_dev_ca(&self, name: &str, san_uri: Option<&str>) -> CertKey {
        let tls = self.data_dir().join("tls");
        issue_client_cert(
            &self.scratch(),
            name,
            &tls.join("ca.pem"),
            &tls.join("ca.key"),
            san_uri,
        )
    }
}
