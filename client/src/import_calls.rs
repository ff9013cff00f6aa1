//! Typed calls for bring your own key: GetParametersForImport, ImportKeyMaterial and
//! DeleteImportedKeyMaterial. Wrapping the material is [`crate::import`]'s job.
//!
//! They retry as every typed call does (RESOURCE_EXHAUSTED and UNAVAILABLE only). A
//! retried ImportKeyMaterial whose first try did succeed (its answer lost) is refused
//! with FAILED_PRECONDITION/INVALID_KEY_STATE: the key then has its material already.

use crate::calls::retried;
use crate::client::Client;
use crate::error::ClientError;
use crate::v1::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMetadata, KeySpec,
    WrappingAlgorithm,
};

impl Client {
    /// A wrapping public key and an import token (valid 24 hours) for the EXTERNAL key
    /// `key_id`. `algorithm` may be UNSPECIFIED (hsmd picks one of the
    /// RSA_AES_KEY_WRAP_* algorithms and says which); `wrapping_key_spec` is RSA_2048
    /// (the default), RSA_3072 or RSA_4096.
    pub async fn get_parameters_for_import(
        &self,
        key_id: &str,
        algorithm: WrappingAlgorithm,
        wrapping_key_spec: Option<KeySpec>,
    ) -> Result<GetParametersForImportResponse, ClientError> {
        let req = GetParametersForImportRequest {
            key_id: key_id.to_string(),
            wrapping_algorithm: algorithm as i32,
            wrapping_key_spec: wrapping_key_spec.map_or(0, |s| s as i32),
        };
        Ok(retried!(
            self,
            "GetParametersForImport",
            keys,
            get_parameters_for_import,
            req
        ))
    }

    /// Imports wrapped key material into an EXTERNAL key and returns its metadata (now
    /// ENABLED).
    pub async fn import_key_material(
        &self,
        req: ImportKeyMaterialRequest,
    ) -> Result<KeyMetadata, ClientError> {
        let resp = retried!(self, "ImportKeyMaterial", keys, import_key_material, req);
        resp.key
            .ok_or(ClientError::MissingField("ImportKeyMaterialResponse.key"))
    }

    /// Destroys an EXTERNAL key's material; the key goes back to PENDING_IMPORT.
    pub async fn delete_imported_key_material(
        &self,
        key_id: &str,
    ) -> Result<KeyMetadata, ClientError> {
        let req = DeleteImportedKeyMaterialRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(
            self,
            "DeleteImportedKeyMaterial",
            keys,
            delete_imported_key_material,
            req
        );
        resp.key.ok_or(ClientError::MissingField(
            "DeleteImportedKeyMaterialResponse.key",
        ))
    }
}
