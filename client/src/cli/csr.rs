//! `hsmctl csr` and `hsmctl cert ...`: certificate signing requests signed in the token,
//! self-signed certificates, and the certificates kept beside a key.

use clap::{Args, Subcommand};
use hsm_client::names::{self, name_of};
use hsm_client::v1::subject_alt_name::Name as SanName;
use hsm_client::v1::{
    CertKeyUsage, CertificateInfo, ExtendedKeyUsage, GenerateCsrRequest, GetCertificateRequest,
    ImportCertificateRequest, SelfSignedCertificateRequest, SigningAlgorithm, SubjectAltName,
};
use serde_json::{Value, json};

use super::args::{format_timestamp, print, print_json, read_input, write_output};
use super::table::Table;
use super::{CliEnv, CliError, Verdict};

/// Subject, names, usages and algorithm: what `csr` and `cert self-signed` share.
#[derive(Debug, Args)]
struct RequestArgs {
    /// Subject as an RFC 4514 string, most specific first:
    /// "CN=app.example.com,O=Example Corp,C=CN". Attributes: CN, O, OU, C, ST, L,
    /// emailAddress, serialNumber, DC, UID; '+' joins a multi-valued RDN; escape
    /// , + " \ < > ; with a backslash or as \XX hex. UTF-8 values are kept as given.
    #[arg(long, value_name = "S")]
    subject: String,
    /// Subject alternative name dns:NAME, ip:ADDR, uri:URI or email:ADDR; repeat for
    /// more. DNS names must be ASCII (punycode xn--... for internationalized names).
    #[arg(long = "san", value_name = "TYPE:VALUE", value_parser = parse_san)]
    sans: Vec<SubjectAltName>,
    /// Key usage bits, comma-separated or repeated: digitalSignature, nonRepudiation,
    /// keyEncipherment, dataEncipherment, keyAgreement, keyCertSign, cRLSign.
    #[arg(long, value_name = "U,...", value_delimiter = ',', value_parser = parse_key_usage)]
    key_usage: Vec<CertKeyUsage>,
    /// Extended key usages, comma-separated or repeated: serverAuth, clientAuth,
    /// codeSigning, emailProtection, timeStamping.
    #[arg(long, value_name = "E,...", value_delimiter = ',', value_parser = parse_eku)]
    ext_key_usage: Vec<ExtendedKeyUsage>,
    /// Signature algorithm (default: RSA_PKCS1_SHA_256 for RSA, ECDSA_SHA_256 for EC_P256,
    /// ECDSA_SHA_384 for EC_P384, ED25519_SHA_512 for ED25519); e.g. RSA_PSS_SHA_256.
    #[arg(long, value_name = "A", value_parser = names::parse::<SigningAlgorithm>)]
    algorithm: Option<SigningAlgorithm>,
}

impl RequestArgs {
    fn key_usage(&self) -> Vec<i32> {
        self.key_usage.iter().map(|u| *u as i32).collect()
    }

    fn ext_key_usage(&self) -> Vec<i32> {
        self.ext_key_usage.iter().map(|u| *u as i32).collect()
    }

    fn algorithm(&self) -> i32 {
        self.algorithm.map_or(0, |a| a as i32)
    }
}

/// Arguments of `csr`.
#[derive(Debug, Args)]
pub struct CsrArgs {
    /// Key UUID or alias/NAME (an ENABLED sign-verify key pair).
    key: String,
    #[command(flatten)]
    request: RequestArgs,
    /// Write the request here (`-` or absent: stdout), PEM unless --der.
    #[arg(long, value_name = "F")]
    out: Option<String>,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
}

/// Certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Import the certificate chain issued for a key (PEM or DER, leaf first). The leaf
    /// must certify the key's public key; it is also stored in the token.
    Import {
        /// Key UUID or alias/NAME.
        key: String,
        /// Chain file (`-` for stdin).
        #[arg(long = "in", value_name = "F")]
        input: String,
    },
    /// Write a key's certificate (PEM) to a file or stdout.
    Get {
        /// Key UUID or alias/NAME.
        key: String,
        /// Write here instead of stdout.
        #[arg(long, value_name = "F")]
        out: Option<String>,
        /// The whole chain as imported, leaf first, instead of the leaf only.
        #[arg(long)]
        chain: bool,
    },
    /// Issue a self-signed certificate for a key, signed in the token.
    SelfSigned(SelfSignedArgs),
}

/// Arguments of `cert self-signed`.
#[derive(Debug, Args)]
pub struct SelfSignedArgs {
    /// Key UUID or alias/NAME (an ENABLED sign-verify key pair).
    key: String,
    #[command(flatten)]
    request: RequestArgs,
    /// Validity from now, 1..3650 days.
    #[arg(long, value_name = "N")]
    days: u32,
    /// Write the certificate (PEM) here (`-`: stdout).
    #[arg(long, value_name = "F")]
    out: String,
    /// Also import it as the key's certificate.
    #[arg(long)]
    import: bool,
}

impl CsrArgs {
    /// Requests the CSR and writes it.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        let out = self.out.unwrap_or_else(|| "-".into());
        if env.json() && out == "-" && self.der {
            return Err(CliError::usage("--der with -o json needs --out FILE"));
        }
        let req = GenerateCsrRequest {
            key_id: self.key,
            algorithm: self.request.algorithm(),
            key_usage: self.request.key_usage(),
            extended_key_usage: self.request.ext_key_usage(),
            subject: self.request.subject,
            subject_alt_names: self.request.sans,
        };
        let resp = env
            .client
            .with_retries("GenerateCsr", || {
                let mut c = env.client.certs();
                let req = req.clone();
                async move { c.generate_csr(req).await }
            })
            .await?
            .into_inner();
        if env.json() {
            if out != "-" {
                write_bytes(&out, self.der, &resp.csr_der, &resp.csr_pem, "CSR")?;
            }
            print_json(&json!({
                "key_id": resp.key_id,
                "algorithm": name_of::<SigningAlgorithm>(resp.algorithm),
                "csr_pem": resp.csr_pem,
                "out": (out != "-").then_some(out),
            }))?;
        } else {
            write_bytes(&out, self.der, &resp.csr_der, &resp.csr_pem, "CSR")?;
        }
        Ok(Verdict::Yes)
    }
}

fn write_bytes(
    out: &str,
    der: bool,
    der_bytes: &[u8],
    pem: &str,
    what: &str,
) -> Result<(), CliError> {
    if der {
        write_output(what, out, der_bytes)
    } else {
        write_output(what, out, pem.as_bytes())
    }
}

impl CertCommand {
    /// Runs the command.
    pub async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        match self {
            CertCommand::Import { key, input } => {
                let req = ImportCertificateRequest {
                    key_id: key,
                    certificate_chain: read_input("certificate chain", &input)?,
                };
                let resp = env
                    .client
                    .with_retries("ImportCertificate", || {
                        let mut c = env.client.certs();
                        let req = req.clone();
                        async move { c.import_certificate(req).await }
                    })
                    .await?;
                let resp = resp.into_inner();
                let mut extra = vec![("chain_length", json!(resp.chain_length))];
                extra.insert(0, ("key_id", json!(resp.key_id)));
                show_info(env, resp.info.as_ref(), &extra)?;
            }
            CertCommand::Get { key, out, chain } => {
                let req = GetCertificateRequest { key_id: key };
                let resp = env
                    .client
                    .with_retries("GetCertificate", || {
                        let mut c = env.client.certs();
                        let req = req.clone();
                        async move { c.get_certificate(req).await }
                    })
                    .await?;
                let resp = resp.into_inner();
                let pem = if chain {
                    &resp.chain_pem
                } else {
                    &resp.certificate_pem
                };
                if env.json() {
                    if let Some(out) = &out {
                        write_output("certificate", out, pem.as_bytes())?;
                    }
                    let mut v = info_json(resp.info.as_ref());
                    v["key_id"] = json!(resp.key_id);
                    v["chain_length"] = json!(resp.chain_der.len());
                    v["import_time"] = json!(format_timestamp(resp.import_time.as_ref()));
                    v["certificate_pem"] = json!(resp.certificate_pem);
                    v["chain_pem"] = json!(resp.chain_pem);
                    v["out"] = json!(out);
                    print_json(&v)?;
                } else {
                    write_output("certificate", out.as_deref().unwrap_or("-"), pem.as_bytes())?;
                }
            }
            CertCommand::SelfSigned(a) => return a.run(env).await,
        }
        Ok(Verdict::Yes)
    }
}

impl SelfSignedArgs {
    async fn run(self, env: &CliEnv) -> Result<Verdict, CliError> {
        if env.json() && self.out == "-" {
            return Err(CliError::usage(
                "--out - would mix the certificate into the JSON output; name a file",
            ));
        }
        let req = SelfSignedCertificateRequest {
            key_id: self.key,
            algorithm: self.request.algorithm(),
            key_usage: self.request.key_usage(),
            extended_key_usage: self.request.ext_key_usage(),
            subject: self.request.subject,
            subject_alt_names: self.request.sans,
            validity_days: self.days,
            import: self.import,
        };
        let resp = env
            .client
            .with_retries("SelfSignedCertificate", || {
                let mut c = env.client.certs();
                let req = req.clone();
                async move { c.self_signed_certificate(req).await }
            })
            .await?;
        let resp = resp.into_inner();
        write_output("certificate", &self.out, resp.certificate_pem.as_bytes())?;
        if env.json() {
            let mut v = info_json(resp.info.as_ref());
            v["key_id"] = json!(resp.key_id);
            v["algorithm"] = json!(name_of::<SigningAlgorithm>(resp.algorithm));
            v["imported"] = json!(resp.imported);
            v["out"] = json!(self.out);
            print_json(&v)?;
        }
        Ok(Verdict::Yes)
    }
}

fn info_json(info: Option<&CertificateInfo>) -> Value {
    let i = info.cloned().unwrap_or_default();
    json!({
        "subject": i.subject,
        "issuer": i.issuer,
        "serial_number": i.serial_number,
        "not_before": format_timestamp(i.not_before.as_ref()),
        "not_after": format_timestamp(i.not_after.as_ref()),
    })
}

/// Prints a certificate's details (json: with `extra` fields).
fn show_info(
    env: &CliEnv,
    info: Option<&CertificateInfo>,
    extra: &[(&str, Value)],
) -> Result<(), CliError> {
    let mut v = info_json(info);
    for (k, x) in extra {
        v[*k] = x.clone();
    }
    if env.json() {
        return print_json(&v);
    }
    let mut t = Table::plain();
    for field in [
        "key_id",
        "subject",
        "issuer",
        "serial_number",
        "not_before",
        "not_after",
        "chain_length",
    ] {
        let text = match &v[field] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        t.row([field.to_string(), text]);
    }
    print(&t.render())
}

/// Parses `dns:NAME`, `ip:ADDR`, `uri:URI` or `email:ADDR` (type case-insensitive).
pub fn parse_san(input: &str) -> Result<SubjectAltName, String> {
    let (kind, value) = input.split_once(':').ok_or_else(|| {
        format!("bad SAN {input:?}: expected TYPE:VALUE with TYPE dns, ip, uri or email")
    })?;
    let value = value.to_string();
    let name = match kind.to_ascii_lowercase().as_str() {
        "dns" => SanName::DnsName(value),
        "ip" => SanName::IpAddress(value),
        "uri" => SanName::Uri(value),
        "email" => SanName::Email(value),
        other => {
            return Err(format!(
                "bad SAN type {other:?} in {input:?}: use dns, ip, uri or email"
            ));
        }
    };
    Ok(SubjectAltName { name: Some(name) })
}

/// Folds a usage name to compare: `digitalSignature`, `DIGITAL_SIGNATURE` and
/// `digital-signature` are the same.
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Parses a key usage bit by its X.509 name (digitalSignature) or API name.
pub fn parse_key_usage(input: &str) -> Result<CertKeyUsage, String> {
    Ok(match fold(input).as_str() {
        "digitalsignature" => CertKeyUsage::DigitalSignature,
        "nonrepudiation" | "contentcommitment" => CertKeyUsage::NonRepudiation,
        "keyencipherment" => CertKeyUsage::KeyEncipherment,
        "dataencipherment" => CertKeyUsage::DataEncipherment,
        "keyagreement" => CertKeyUsage::KeyAgreement,
        "keycertsign" => CertKeyUsage::KeyCertSign,
        "crlsign" => CertKeyUsage::CrlSign,
        _ => {
            return Err(format!(
                "unknown key usage {input:?}; expected one of: digitalSignature, nonRepudiation, keyEncipherment, \
                 dataEncipherment, keyAgreement, keyCertSign, cRLSign"
            ));
        }
    })
}

/// Parses an extended key usage by its X.509 name (serverAuth) or API name.
pub fn parse_eku(input: &str) -> Result<ExtendedKeyUsage, String> {
    Ok(match fold(input).as_str() {
        "serverauth" => ExtendedKeyUsage::ServerAuth,
        "clientauth" => ExtendedKeyUsage::ClientAuth,
        "codesigning" => ExtendedKeyUsage::CodeSigning,
        "emailprotection" => ExtendedKeyUsage::EmailProtection,
        "timestamping" => ExtendedKeyUsage::TimeStamping,
        _ => {
            return Err(format!(
                "unknown extended key usage {input:?}; expected one of: serverAuth, clientAuth, codeSigning, \
                 emailProtection, timeStamping"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans() {
        assert_eq!(
            parse_san("dns:a.example").unwrap().name,
            Some(SanName::DnsName("a.example".into()))
        );
        assert_eq!(
            parse_san("URI:spiffe://corp/x").unwrap().name,
            Some(SanName::Uri("spiffe://corp/x".into()))
        );
        assert_eq!(
            parse_san("ip:2001:db8::1").unwrap().name,
            Some(SanName::IpAddress("2001:db8::1".into()))
        );
        assert!(parse_san("a.example").unwrap_err().contains("TYPE:VALUE"));
        assert!(parse_san("dn:x").unwrap_err().contains("bad SAN type"));
    }

    #[test]
    fn usage_names() {
        assert_eq!(
            parse_key_usage("digitalSignature"),
            Ok(CertKeyUsage::DigitalSignature)
        );
        assert_eq!(
            parse_key_usage("KEY_CERT_SIGN"),
            Ok(CertKeyUsage::KeyCertSign)
        );
        assert_eq!(parse_key_usage("cRLSign"), Ok(CertKeyUsage::CrlSign));
        assert!(parse_key_usage("sign").is_err());
        assert_eq!(parse_eku("serverAuth"), Ok(ExtendedKeyUsage::ServerAuth));
        assert_eq!(
            parse_eku("time-stamping"),
            Ok(ExtendedKeyUsage::TimeStamping)
        );
        assert!(
            parse_eku("ocspSigning")
                .unwrap_err()
                .contains("expected one of")
        );
    }
}
