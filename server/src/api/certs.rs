//! CertificateService: CSRs and self-signed certificates signed in the token, and the
//! certificate chains imported for keys. Decode and check the request, authorize, then
//! one hop into the blocking pool that resolves the key and runs the operation.

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::certificate_service_server::CertificateService;
use tonic::{Request, Response, Status};

use super::convert::{alg_from_pb, alg_to_pb, ts};
use super::{ApiError, ApiState, Call};
use crate::auth::Action;
use crate::csr::chain::{self, CertInfo};
use crate::csr::ops::{self, CertRequest};
use crate::csr::san::{self, Eku, KeyUsageBit, RequestedExtensions, SanKind};
use crate::csr::{CertError, subject};

macro_rules! method {
    ($name:literal) => {
        concat!("/hsmd.v1.CertificateService/", $name)
    };
}

/// The CertificateService implementation.
pub(crate) struct CertApi {
    state: ApiState,
}

impl CertApi {
    pub(crate) fn new(state: ApiState) -> Self {
        CertApi { state }
    }
}

/// Decodes and checks what GenerateCsr and SelfSignedCertificate share.
fn cert_request(
    subject_text: &str,
    sans: Vec<pb::SubjectAltName>,
    key_usage: &[i32],
    eku: &[i32],
    algorithm: i32,
) -> Result<CertRequest, ApiError> {
    let algorithm = if algorithm == 0 {
        None
    } else {
        Some(alg_from_pb(algorithm)?)
    };
    let subject = subject::parse(subject_text)?;
    let mut names = Vec::with_capacity(sans.len());
    for (i, s) in sans.into_iter().enumerate() {
        use pb::subject_alt_name::Name;
        let (kind, value) = match s.name {
            Some(Name::DnsName(v)) => (SanKind::Dns, v),
            Some(Name::IpAddress(v)) => (SanKind::Ip, v),
            Some(Name::Uri(v)) => (SanKind::Uri, v),
            Some(Name::Email(v)) => (SanKind::Email, v),
            None => {
                return Err(CertError::San(format!(
                    "entry {} sets no name (one of dns_name, ip_address, uri, email)",
                    i + 1
                ))
                .into());
            }
        };
        names.push(san::parse(kind, &value)?);
    }
    san::check_list(&names)?;
    let key_usage = key_usage
        .iter()
        .map(|v| key_usage_from_pb(*v))
        .collect::<Result<_, _>>()?;
    let eku = eku
        .iter()
        .map(|v| eku_from_pb(*v))
        .collect::<Result<_, _>>()?;
    Ok(CertRequest {
        subject,
        extensions: RequestedExtensions {
            sans: names,
            key_usage,
            eku,
        },
        algorithm,
    })
}

fn key_usage_from_pb(v: i32) -> Result<KeyUsageBit, CertError> {
    use pb::CertKeyUsage as P;
    Ok(match P::try_from(v).unwrap_or(P::Unspecified) {
        P::DigitalSignature => KeyUsageBit::DigitalSignature,
        P::NonRepudiation => KeyUsageBit::NonRepudiation,
        P::KeyEncipherment => KeyUsageBit::KeyEncipherment,
        P::DataEncipherment => KeyUsageBit::DataEncipherment,
        P::KeyAgreement => KeyUsageBit::KeyAgreement,
        P::KeyCertSign => KeyUsageBit::KeyCertSign,
        P::CrlSign => KeyUsageBit::CrlSign,
        P::Unspecified => {
            return Err(CertError::InvalidArgument(format!(
                "key_usage value {v} is not one of DIGITAL_SIGNATURE, NON_REPUDIATION, KEY_ENCIPHERMENT, \
                 DATA_ENCIPHERMENT, KEY_AGREEMENT, KEY_CERT_SIGN, CRL_SIGN"
            )));
        }
    })
}

fn eku_from_pb(v: i32) -> Result<Eku, CertError> {
    use pb::ExtendedKeyUsage as P;
    Ok(match P::try_from(v).unwrap_or(P::Unspecified) {
        P::ServerAuth => Eku::ServerAuth,
        P::ClientAuth => Eku::ClientAuth,
        P::CodeSigning => Eku::CodeSigning,
        P::EmailProtection => Eku::EmailProtection,
        P::TimeStamping => Eku::TimeStamping,
        P::Unspecified => {
            return Err(CertError::InvalidArgument(format!(
                "extended_key_usage value {v} is not one of SERVER_AUTH, CLIENT_AUTH, CODE_SIGNING, \
                 EMAIL_PROTECTION, TIME_STAMPING"
            )));
        }
    })
}

/// Notes the requested algorithm in the audit record (the one used is noted on success).
fn note_algorithm(call: &mut Call, algorithm: i32) {
    if let Ok(a) = alg_from_pb(algorithm) {
        call.event.algorithm = a.name().into();
    }
}

fn info_to_pb(i: &CertInfo) -> pb::CertificateInfo {
    pb::CertificateInfo {
        subject: i.subject.clone(),
        issuer: i.issuer.clone(),
        serial_number: i.serial.clone(),
        not_before: Some(ts(i.not_before)),
        not_after: Some(ts(i.not_after)),
    }
}

#[tonic::async_trait]
impl CertificateService for CertApi {
    async fn generate_csr(
        &self,
        req: Request<pb::GenerateCsrRequest>,
    ) -> Result<Response<pb::GenerateCsrResponse>, Status> {
        let call = self.state.call(req, method!("GenerateCsr"));
        call.answer(Action::GenerateCsr, async |call, grant, r| {
            note_algorithm(call, r.algorithm);
            let cr = cert_request(
                &r.subject,
                r.subject_alt_names,
                &r.key_usage,
                &r.extended_key_usage,
                r.algorithm,
            );
            let cr = match cr {
                Ok(cr) => cr,
                Err(e) => {
                    call.note_key(&r.key_id, None);
                    return Err(e);
                }
            };
            let (id, issued) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok((key.id, ops::generate_csr(m, &key, &cr)?))
                })
                .await?;
            call.event.algorithm = issued.algorithm.name().into();
            call.event.input_sha256 = issued.signed.signed_sha256.clone();
            Ok(pb::GenerateCsrResponse {
                key_id: id.to_string(),
                algorithm: alg_to_pb(issued.algorithm),
                csr_der: issued.signed.der,
                csr_pem: issued.signed.pem,
            })
        })
        .await
    }

    async fn self_signed_certificate(
        &self,
        req: Request<pb::SelfSignedCertificateRequest>,
    ) -> Result<Response<pb::SelfSignedCertificateResponse>, Status> {
        let call = self.state.call(req, method!("SelfSignedCertificate"));
        call.answer(Action::SelfSignedCertificate, async |call, grant, r| {
            note_algorithm(call, r.algorithm);
            let cr = cert_request(
                &r.subject,
                r.subject_alt_names,
                &r.key_usage,
                &r.extended_key_usage,
                r.algorithm,
            );
            let cr = match cr {
                Ok(cr) => cr,
                Err(e) => {
                    call.note_key(&r.key_id, None);
                    return Err(e);
                }
            };
            let (days, import) = (r.validity_days, r.import);
            let (id, (issued, info)) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok((key.id, ops::self_signed(m, &key, &cr, days, import)?))
                })
                .await?;
            call.event.algorithm = issued.algorithm.name().into();
            call.event.input_sha256 = issued.signed.signed_sha256.clone();
            Ok(pb::SelfSignedCertificateResponse {
                key_id: id.to_string(),
                algorithm: alg_to_pb(issued.algorithm),
                certificate_der: issued.signed.der,
                certificate_pem: issued.signed.pem,
                info: Some(info_to_pb(&info)),
                imported: import,
            })
        })
        .await
    }

    async fn import_certificate(
        &self,
        req: Request<pb::ImportCertificateRequest>,
    ) -> Result<Response<pb::ImportCertificateResponse>, Status> {
        let call = self.state.call(req, method!("ImportCertificate"));
        let call = call.note_input(|r| &r.certificate_chain);
        call.answer(Action::ImportCertificate, async |call, grant, r| {
            let input = r.certificate_chain;
            let (id, (info, len)) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok((key.id, ops::import(m, &key, &input)?))
                })
                .await?;
            Ok(pb::ImportCertificateResponse {
                key_id: id.to_string(),
                info: Some(info_to_pb(&info)),
                chain_length: len as u32,
            })
        })
        .await
    }

    async fn get_certificate(
        &self,
        req: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        let call = self.state.call(req, method!("GetCertificate"));
        call.answer(Action::GetCertificate, async |call, grant, r| {
            let (id, kc) = self
                .state
                .with_key(call, &grant, &r.key_id, |m, key| {
                    Ok((key.id, ops::get(m, &key)?))
                })
                .await?;
            let leaf = kc.chain.der[0].clone();
            let info = chain::info(&kc.chain.certs[0]);
            Ok(pb::GetCertificateResponse {
                key_id: id.to_string(),
                certificate_pem: chain::to_pem(&leaf),
                certificate_der: leaf,
                chain_pem: kc.chain.der.iter().map(|d| chain::to_pem(d)).collect(),
                chain_der: kc.chain.der,
                info: Some(info_to_pb(&info)),
                import_time: Some(ts(kc.stored.import_time)),
            })
        })
        .await
    }
}
