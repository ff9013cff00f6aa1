//! Typed convenience methods for the common calls.
//!
//! Each one fills the request, runs it under the client's retry policy (only
//! RESOURCE_EXHAUSTED and UNAVAILABLE are retried; with several endpoints, on the
//! endpoint `retry::route` picks), unwraps the response to what callers want (a key's
//! metadata, a signature, a verdict) and turns every status into a [`ClientError`].
//! For anything not covered here, use [`Client::keys`], [`Client::audit`] or
//! [`Client::token`] and the generated request types directly.

use tonic::Streaming;

use crate::client::Client;
use crate::error::ClientError;
use crate::retry::Idempotency;
use crate::v1::{
    Alias, AuditRecord, CancelKeyDeletionRequest, CreateAliasRequest, CreateKeyRequest,
    DeleteAliasRequest, DescribeKeyRequest, DisableKeyRequest, DisableKeyRotationRequest,
    EnableKeyRequest, EnableKeyRotationRequest, GenerateRandomRequest, GetAuditPublicKeyRequest,
    GetAuditPublicKeyResponse, GetPublicKeyRequest, GetPublicKeyResponse, GetTokenInfoRequest,
    GetTokenInfoResponse, KeyMetadata, ListAliasesRequest, ListAliasesResponse, ListKeysRequest,
    ListKeysResponse, MessageType, QueryAuditRequest, RotateKeyRequest, ScheduleKeyDeletionRequest,
    SignRequest, SigningAlgorithm, UpdateAliasRequest, VerifyAuditLogRequest,
    VerifyAuditLogResponse, VerifyRequest,
};

/// Pages above this many are refused by the server; listing everything uses the maximum.
const MAX_PAGE_SIZE: u32 = 1000;

/// One retried call: `retried!(self, "Sign", keys, sign, req)` is the response. The
/// call's idempotency (whether a retry may go to another endpoint after a failure that
/// leaves its outcome unknown) is [`Idempotency::of_call`] of its name, or given last:
/// `retried!(self, "CreateKey", keys, create_key, req, Idempotency::Idempotent)`.
macro_rules! retried {
    ($self:ident, $name:literal, $svc:ident, $method:ident, $req:expr) => {
        retried!(
            $self,
            $name,
            $svc,
            $method,
            $req,
            $crate::retry::Idempotency::of_call($name)
        )
    };
    ($self:ident, $name:literal, $svc:ident, $method:ident, $req:expr, $idempotency:expr) => {{
        let req = $req;
        $self
            .with_retries_as($name, $idempotency, || {
                let mut c = $self.$svc();
                let req = req.clone();
                async move { c.$method(req).await }
            })
            .await?
            .into_inner()
    }};
}
pub(crate) use retried;

/// A fresh idempotency token: 128 random bits in hex.
fn idempotency_token() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn key_of(key: Option<KeyMetadata>, what: &'static str) -> Result<KeyMetadata, ClientError> {
    key.ok_or(ClientError::MissingField(what))
}

impl Client {
    /// Creates a key and returns its metadata. Without an `idempotency_token` in the
    /// request one is made up, so that a retry (after a lost answer, say) returns the
    /// key the first try made instead of making a second one. With the token the call
    /// is idempotent, also across the replicas of a cluster (hsmd keeps the tokens in its
    /// shared store), so it fails over to another endpoint like a read.
    pub async fn create_key(&self, mut req: CreateKeyRequest) -> Result<KeyMetadata, ClientError> {
        if req.idempotency_token.is_empty() {
            req.idempotency_token = idempotency_token();
        }
        let idempotent = Idempotency::Idempotent;
        let resp = retried!(self, "CreateKey", keys, create_key, req, idempotent);
        key_of(resp.key, "CreateKeyResponse.key")
    }

    /// Returns a key's metadata. `key_id` is a UUID or `alias/NAME`.
    pub async fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = DescribeKeyRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(self, "DescribeKey", keys, describe_key, req);
        key_of(resp.key, "DescribeKeyResponse.key")
    }

    /// Lists one page of keys (filters and paging as in the request).
    pub async fn list_keys(&self, req: ListKeysRequest) -> Result<ListKeysResponse, ClientError> {
        Ok(retried!(self, "ListKeys", keys, list_keys, req))
    }

    /// Lists every key matching the request's filters, following `next_page_token`.
    /// The request's `page_size` and `page_token` are ignored.
    pub async fn list_all_keys(
        &self,
        mut req: ListKeysRequest,
    ) -> Result<Vec<KeyMetadata>, ClientError> {
        req.page_size = MAX_PAGE_SIZE;
        req.page_token.clear();
        let mut keys = Vec::new();
        loop {
            let page = self.list_keys(req.clone()).await?;
            keys.extend(page.keys);
            if page.next_page_token.is_empty() {
                return Ok(keys);
            }
            req.page_token = page.next_page_token;
        }
    }

    /// Returns the public half of an asymmetric key (DER and PEM) and its algorithms.
    pub async fn get_public_key(&self, key_id: &str) -> Result<GetPublicKeyResponse, ClientError> {
        let req = GetPublicKeyRequest {
            key_id: key_id.to_string(),
        };
        Ok(retried!(self, "GetPublicKey", keys, get_public_key, req))
    }

    /// Enables a DISABLED key (no-op when already ENABLED).
    pub async fn enable_key(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = EnableKeyRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(self, "EnableKey", keys, enable_key, req);
        key_of(resp.key, "EnableKeyResponse.key")
    }

    /// Disables an ENABLED key (no-op when already DISABLED).
    pub async fn disable_key(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = DisableKeyRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(self, "DisableKey", keys, disable_key, req);
        key_of(resp.key, "DisableKeyResponse.key")
    }

    /// Schedules a key's destruction after `pending_window_days` (7..30; 0 = 30).
    /// The returned metadata carries the `deletion_time`.
    pub async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_days: u32,
    ) -> Result<KeyMetadata, ClientError> {
        let req = ScheduleKeyDeletionRequest {
            key_id: key_id.to_string(),
            pending_window_days,
        };
        let resp = retried!(
            self,
            "ScheduleKeyDeletion",
            keys,
            schedule_key_deletion,
            req
        );
        let mut key = key_of(resp.key, "ScheduleKeyDeletionResponse.key")?;
        if key.deletion_time.is_none() {
            key.deletion_time = resp.deletion_time;
        }
        Ok(key)
    }

    /// Cancels a scheduled deletion; the key becomes DISABLED.
    pub async fn cancel_key_deletion(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = CancelKeyDeletionRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(self, "CancelKeyDeletion", keys, cancel_key_deletion, req);
        key_of(resp.key, "CancelKeyDeletionResponse.key")
    }

    /// Makes a new version of an AES-256 key in the token; Encrypt uses it from now on.
    /// Sent once, never retried: a rotation whose answer was lost (or refused with
    /// AUDIT_UNAVAILABLE after the version was made) would make another version if
    /// repeated. Describe the key before rotating again.
    pub async fn rotate_key(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = RotateKeyRequest {
            key_id: key_id.to_string(),
        };
        let resp = self
            .keys()
            .rotate_key(req)
            .await
            .map_err(ClientError::from)?
            .into_inner();
        key_of(resp.key, "RotateKeyResponse.key")
    }

    /// Rotates the key automatically every `period_days` (7..365).
    pub async fn enable_key_rotation(
        &self,
        key_id: &str,
        period_days: u32,
    ) -> Result<KeyMetadata, ClientError> {
        let req = EnableKeyRotationRequest {
            key_id: key_id.to_string(),
            rotation_period_days: period_days,
        };
        let resp = retried!(self, "EnableKeyRotation", keys, enable_key_rotation, req);
        key_of(resp.key, "EnableKeyRotationResponse.key")
    }

    /// Stops the key's automatic rotation.
    pub async fn disable_key_rotation(&self, key_id: &str) -> Result<KeyMetadata, ClientError> {
        let req = DisableKeyRotationRequest {
            key_id: key_id.to_string(),
        };
        let resp = retried!(self, "DisableKeyRotation", keys, disable_key_rotation, req);
        key_of(resp.key, "DisableKeyRotationResponse.key")
    }

    /// Creates `alias/NAME` (or `NAME`) for the key with UUID `target_key_id`.
    pub async fn create_alias(
        &self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<Alias, ClientError> {
        let req = CreateAliasRequest {
            alias_name: alias_name.to_string(),
            target_key_id: target_key_id.to_string(),
        };
        let resp = retried!(self, "CreateAlias", keys, create_alias, req);
        resp.alias
            .ok_or(ClientError::MissingField("CreateAliasResponse.alias"))
    }

    /// Points an existing alias at the key with UUID `target_key_id`.
    pub async fn update_alias(
        &self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<Alias, ClientError> {
        let req = UpdateAliasRequest {
            alias_name: alias_name.to_string(),
            target_key_id: target_key_id.to_string(),
        };
        let resp = retried!(self, "UpdateAlias", keys, update_alias, req);
        resp.alias
            .ok_or(ClientError::MissingField("UpdateAliasResponse.alias"))
    }

    /// Deletes an alias; its key is unchanged.
    pub async fn delete_alias(&self, alias_name: &str) -> Result<(), ClientError> {
        let req = DeleteAliasRequest {
            alias_name: alias_name.to_string(),
        };
        retried!(self, "DeleteAlias", keys, delete_alias, req);
        Ok(())
    }

    /// Lists every alias (or only those of `key_id`), following `next_page_token`.
    pub async fn list_aliases(&self, key_id: Option<&str>) -> Result<Vec<Alias>, ClientError> {
        let mut req = ListAliasesRequest {
            key_id: key_id.unwrap_or_default().to_string(),
            page_size: MAX_PAGE_SIZE,
            page_token: String::new(),
        };
        let mut aliases = Vec::new();
        loop {
            let page: ListAliasesResponse =
                retried!(self, "ListAliases", keys, list_aliases, req.clone());
            aliases.extend(page.aliases);
            if page.next_page_token.is_empty() {
                return Ok(aliases);
            }
            req.page_token = page.next_page_token;
        }
    }

    /// Signs `message` (RAW, at most 4096 bytes) or a digest (DIGEST) inside the token
    /// and returns the signature bytes.
    pub async fn sign(
        &self,
        key_id: &str,
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let req = SignRequest {
            key_id: key_id.to_string(),
            algorithm: algorithm as i32,
            message_type: message_type as i32,
            message,
        };
        Ok(retried!(self, "Sign", keys, sign, req).signature)
    }

    /// Verifies a signature; `Ok(false)` for a signature that does not verify, an error
    /// only for bad input or an unusable key.
    pub async fn verify(
        &self,
        key_id: &str,
        algorithm: SigningAlgorithm,
        message_type: MessageType,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, ClientError> {
        let req = VerifyRequest {
            key_id: key_id.to_string(),
            algorithm: algorithm as i32,
            message_type: message_type as i32,
            message,
            signature,
        };
        Ok(retried!(self, "Verify", keys, verify, req).valid)
    }

    /// Returns `length` (1..1024) bytes from the token's random number generator.
    pub async fn generate_random(&self, length: u32) -> Result<Vec<u8>, ClientError> {
        let req = GenerateRandomRequest { length };
        Ok(retried!(self, "GenerateRandom", keys, generate_random, req).random)
    }

    /// Describes the token and what hsmd offers on it.
    pub async fn token_info(&self) -> Result<GetTokenInfoResponse, ClientError> {
        Ok(retried!(
            self,
            "GetTokenInfo",
            token,
            get_token_info,
            GetTokenInfoRequest {}
        ))
    }

    /// Streams the audit records matching the request, oldest first. Read it with
    /// `stream.message().await` (errors convert with `ClientError::from`).
    pub async fn query_audit(
        &self,
        req: QueryAuditRequest,
    ) -> Result<Streaming<AuditRecord>, ClientError> {
        Ok(retried!(self, "QueryAudit", audit, query_audit, req))
    }

    /// Collects every audit record matching the request.
    pub async fn query_audit_all(
        &self,
        req: QueryAuditRequest,
    ) -> Result<Vec<AuditRecord>, ClientError> {
        let mut stream = self.query_audit(req).await?;
        let mut records = Vec::new();
        while let Some(record) = stream.message().await? {
            records.push(record);
        }
        Ok(records)
    }

    /// Walks the audit log's hash chain on the server and reports the first break.
    pub async fn verify_audit_log(&self) -> Result<VerifyAuditLogResponse, ClientError> {
        Ok(retried!(
            self,
            "VerifyAuditLog",
            audit,
            verify_audit_log,
            VerifyAuditLogRequest {}
        ))
    }

    /// The audit key's public half (PEM and DER), for offline verification of the
    /// checkpoints.
    pub async fn audit_public_key(&self) -> Result<GetAuditPublicKeyResponse, ClientError> {
        Ok(retried!(
            self,
            "GetAuditPublicKey",
            audit,
            get_audit_public_key,
            GetAuditPublicKeyRequest {}
        ))
    }
}
