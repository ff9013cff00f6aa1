//! Certificate objects in the token: a key's leaf certificate is kept as a
//! CKO_CERTIFICATE (CKC_X_509) object with the key's CKA_ID and CKA_LABEL, so PKCS#11
//! applications (pkcs11-tool, OpenSSL's pkcs11 provider, TLS servers) find the
//! certificate next to its private key. Certificates are public: CKA_PRIVATE false.

use cryptoki::object::{Attribute, CertificateType, ObjectClass};
use uuid::Uuid;

use super::{HsmError, Pkcs11Backend};

/// The DER pieces of an X.509 certificate the token object carries.
#[derive(Debug, Clone)]
pub(crate) struct CertificateObject {
    /// The whole certificate (CKA_VALUE).
    pub(crate) value: Vec<u8>,
    /// DER of the subject Name (CKA_SUBJECT).
    pub(crate) subject: Vec<u8>,
    /// DER of the issuer Name (CKA_ISSUER).
    pub(crate) issuer: Vec<u8>,
    /// DER of the serial number INTEGER (CKA_SERIAL_NUMBER).
    pub(crate) serial: Vec<u8>,
}

impl Pkcs11Backend {
    /// Stores `cert` as the key's certificate object, replacing any certificate object
    /// with the key's CKA_ID. The new object is created before the old ones are
    /// destroyed, so a failure leaves the previous certificate in place.
    pub(crate) fn put_certificate(
        &self,
        id: Uuid,
        cert: &CertificateObject,
    ) -> Result<(), HsmError> {
        let template = vec![
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modifiable(true),
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Label(id.to_string().into_bytes()),
            Attribute::Subject(cert.subject.clone()),
            Attribute::Issuer(cert.issuer.clone()),
            Attribute::SerialNumber(cert.serial.clone()),
            Attribute::Value(cert.value.clone()),
        ];
        let find = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(id.as_bytes().to_vec()),
        ];
        self.with_token_write("C_CreateObject", |s| {
            let old = s.find_objects(&find)?;
            s.create_object(&template)?;
            for h in old {
                s.destroy_object(h)?;
            }
            Ok(())
        })
    }
}
