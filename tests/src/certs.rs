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

/// The dev CA driven by `openssl ca`, with its database in the test's scratch folder:
/// issues client certificates with chosen validity dates, revokes them and writes CRLs,
/// all with the openssl CLI (nothing of hsmd's).
pub struct OpensslCa {
    dir: PathBuf,
    conf: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl OpensslCa {
    /// The daemon's dev CA (`DIR/tls/ca.pem`, `ca.key`).
    pub fn dev(inst: &crate::Instance) -> OpensslCa {
        let tls = inst.data_dir().join("tls");
        let dir = inst.scratch().join("ca-db");
        fs::create_dir_all(dir.join("new")).expect("ca-db");
        fs::write(dir.join("index.txt"), "").expect("index.txt");
        fs::write(dir.join("crlnumber"), "01\n").expect("crlnumber");
        let conf = write_file(
            &dir,
            "openssl-ca.cnf",
            format!(
                "[ ca ]\ndefault_ca = test_ca\n\
                 [ test_ca ]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/new\n\
                 serial = {d}/serial\ncrlnumber = {d}/crlnumber\ndefault_md = sha256\n\
                 default_days = 2\ndefault_crl_days = 2\npolicy = any\nunique_subject = no\n\
                 [ any ]\ncommonName = supplied\n",
                d = dir.display()
            )
            .as_bytes(),
        );
        fs::write(
            dir.join("serial"),
            format!("{}\n", hex::encode(uuid::Uuid::new_v4().as_bytes())),
        )
        .expect("serial");
        OpensslCa {
            dir,
            conf,
            cert: tls.join("ca.pem"),
            key: tls.join("ca.key"),
        }
    }

    fn ca(&self) -> Command {
        let mut cmd = Command::new("openssl");
        cmd.args(["ca", "-batch", "-config"])
            .arg(&self.conf)
            .arg("-cert")
            .arg(&self.cert)
            .arg("-keyfile")
            .arg(&self.key);
        cmd
    }

    /// A client certificate (CN `name`, SAN URI `san_uri`), valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`; `None`: from now for two days).
    pub fn issue(&self, name: &str, san_uri: &str, dates: Option<(&str, &str)>) -> CertKey {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let ext = write_file(
            &self.dir,
            &format!("{name}.ext"),
            format!(
                "[ client ]\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n\
                 subjectAltName=URI:{san_uri}\n"
            )
            .as_bytes(),
        );
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .arg("-keyout")
            .arg(&key)
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-out")
            .arg(&csr));
        let mut cmd = self.ca();
        cmd.args(["-notext", "-extensions", "client", "-extfile"])
            .arg(&ext)
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert);
        if let Some((start, end)) = dates {
            cmd.args(["-startdate", start, "-enddate", end]);
        }
        run(&mut cmd);
        load(cert, key)
    }

    /// Marks `cert` revoked in the database.
    pub fn revoke(&self, cert: &CertKey) {
        run(self.ca().arg("-revoke").arg(&cert.cert_path));
    }

    /// Writes a CRL of every revoked certificate to `dir/<name>` and checks it with
    /// `openssl crl -CAfile`.
    pub fn crl(&self, name: &str) -> PathBuf {
        let out = self.dir.join(name);
        run(self.ca().arg("-gencrl").arg("-out").arg(&out));
        run(Command::new("openssl")
            .args(["crl", "-noout", "-CAfile"])
            .arg(&self.cert)
            .arg("-in")
            .arg(&out));
        out
    }
}
