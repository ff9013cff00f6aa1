//! The dev PKI made by `hsmd dev`: a local CA, a server certificate for localhost and a
//! client certificate whose SAN URI is the dev principal. Existing files are reused, so
//! profiles and certificates issued from the CA stay valid across restarts.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::write_secret;

/// Makes `dir/{ca,server,client}.{pem,key}` unless they exist.
pub(crate) fn ensure(dir: &Path, client_principal: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let ca_pem = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    if !ca_pem.exists() || !ca_key_path.exists() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "hsmd dev CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        fs::write(&ca_pem, cert.pem())?;
        write_secret(&ca_key_path, &key.serialize_pem())?;
        // A new CA invalidates any leaf made by an old one.
        for f in ["server.pem", "client.pem"] {
            let _ = fs::remove_file(dir.join(f));
        }
    }
    let ca_key = KeyPair::from_pem(&fs::read_to_string(&ca_key_path)?).context("ca.key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&fs::read_to_string(&ca_pem)?, ca_key).context("ca.pem")?;

    if !dir.join("server.pem").exists() {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "hsmd dev server");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue(dir, "server", &params, &issuer)?;
    }
    if !dir.join("client.pem").exists() {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "hsmd-dev-admin");
        params
            .subject_alt_names
            .push(SanType::URI(client_principal.try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(dir, "client", &params, &issuer)?;
    }
    Ok(())
}

fn issue(
    dir: &Path,
    name: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_secret(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_is_made_once_and_names_the_principal() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), "spiffe://hsmd.dev/admin").unwrap();
        let first = fs::read(dir.path().join("client.pem")).unwrap();
        ensure(dir.path(), "spiffe://hsmd.dev/admin").unwrap();
        assert_eq!(first, fs::read(dir.path().join("client.pem")).unwrap());
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&first).unwrap();
        assert_eq!(
            crate::auth::principal_from_cert(&der).as_deref(),
            Some("spiffe://hsmd.dev/admin")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
