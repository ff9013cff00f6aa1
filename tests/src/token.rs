//! The token matrix: which PKCS#11 token the end-to-end tests run on, and capability
//! checks for what a test needs that not every token offers.
//!
//! `E2E_TOKEN=softhsm` (the default) or `tpm` (not `HSMD_...`: hsmd reads every
//! `HSMD_*` variable as config, and the in-process harness shares the environment) chooses the token every
//! [`crate::Daemon`] started with `hsmd dev` gets; `scripts/test` runs the
//! token-dependent test binaries once per token. A test that needs a capability asks
//! [`Instance::offers`]: on a token without it, the answer is `false` only after the
//! refusal hsmd owes the caller has been asserted (named in GetTokenInfo, and a
//! FAILED_PRECONDITION / MECHANISM_NOT_SUPPORTED naming the mechanism), so the expected
//! difference is a checked result, never a skipped test.

use hsmd_proto::v1::{CreateKeyRequest, GetTokenInfoRequest, KeyOrigin, KeySpec, KeyUsage};
use tonic::Code;

use crate::{Instance, expect_ok, reason_of, tpm::TPM_ARGS};

/// The environment variable that chooses the token.
pub const TOKEN_VAR: &str = "E2E_TOKEN";

/// A token the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// SoftHSM2, the default.
    SoftHsm,
    /// tpm2-pkcs11 on swtpm (`hsmd dev --token tpm`).
    Tpm,
}

impl TokenKind {
    /// The token chosen by `E2E_TOKEN` (unset or empty: SoftHSM2).
    pub fn under_test() -> TokenKind {
        match std::env::var(TOKEN_VAR) {
            Err(std::env::VarError::NotPresent) => TokenKind::SoftHsm,
            Ok(v) if v.is_empty() || v == "softhsm" => TokenKind::SoftHsm,
            Ok(v) if v == "tpm" => TokenKind::Tpm,
            other => panic!("{TOKEN_VAR}={other:?}: expected softhsm or tpm"),
        }
    }

    /// The `hsmd dev` arguments that select this token.
    pub fn dev_args(self) -> &'static [&'static str] {
        match self {
            TokenKind::SoftHsm => &[],
            TokenKind::Tpm => &TPM_ARGS,
        }
    }
}

/// Something a test needs that not every token offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// AES_256 keys (Encrypt, Decrypt, data keys, envelopes, rotation, the KMS plugin):
    /// CKM_AES_GCM.
    Aes256,
    /// ED25519 keys: CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA.
    Ed25519,
    /// RSA_4096 keys: RSA key generation up to 4096 bits.
    Rsa4096,
    /// Keys of origin EXTERNAL and every import path (AES key wrap, OAEP).
    Import,
}

impl Need {
    /// Whether GetTokenInfo's refusal names this need.
    fn matches(self, feature: &str) -> bool {
        match self {
            Need::Aes256 => feature == "AES_256",
            Need::Ed25519 => feature == "ED25519",
            Need::Rsa4096 => feature == "RSA_4096",
            Need::Import => feature.starts_with("import with"),
        }
    }

    /// A CreateKey that needs it.
    fn probe(self) -> CreateKeyRequest {
        let (spec, usage, origin) = match self {
            Need::Aes256 => (KeySpec::Aes256, KeyUsage::EncryptDecrypt, KeyOrigin::Hsm),
            Need::Ed25519 => (KeySpec::Ed25519, KeyUsage::SignVerify, KeyOrigin::Hsm),
            Need::Rsa4096 => (KeySpec::Rsa4096, KeyUsage::SignVerify, KeyOrigin::Hsm),
            Need::Import => (KeySpec::Rsa2048, KeyUsage::SignVerify, KeyOrigin::External),
        };
        CreateKeyRequest {
            spec: spec as i32,
            usage: usage as i32,
            origin: origin as i32,
            ..Default::default()
        }
    }
}

impl Need {
    /// What CreateKey of `spec` needs beyond RSA-2048/3072 and EC, if anything.
    pub fn for_spec(spec: KeySpec) -> Option<Need> {
        match spec {
            KeySpec::Aes256 => Some(Need::Aes256),
            KeySpec::Ed25519 => Some(Need::Ed25519),
            KeySpec::Rsa4096 => Some(Need::Rsa4096),
            _ => None,
        }
    }
}

impl Instance {
    /// [`Instance::offers`] for what keys of `spec` need (true when they need nothing
    /// special).
    pub async fn offers_spec(&self, spec: KeySpec) -> bool {
        match Need::for_spec(spec) {
            Some(need) => self.offers(need).await,
            None => true,
        }
    }

    /// True when the token under test offers `need`. Otherwise asserts the refusal
    /// (GetTokenInfo lists the feature as refused with a mechanism, and a CreateKey that
    /// needs it fails with FAILED_PRECONDITION / MECHANISM_NOT_SUPPORTED naming that
    /// mechanism) and returns false: the caller's check of this token ends there.
    ///
    /// On SoftHSM2 it answers true without a call (so audit counts stay as they are):
    /// SoftHSM2 offers every [`Need`], and the tests that use them prove it.
    pub async fn offers(&self, need: Need) -> bool {
        if TokenKind::under_test() == TokenKind::SoftHsm {
            return true;
        }
        let (info, _) = expect_ok(
            self.token().get_token_info(GetTokenInfoRequest {}).await,
            "GetTokenInfo",
        );
        let refused: Vec<_> = info
            .refusals
            .iter()
            .filter(|r| need.matches(&r.feature))
            .collect();
        if refused.is_empty() {
            return true;
        }
        let listed = refused
            .iter()
            .map(|r| format!("{} ({}: {})", r.feature, r.mechanism, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        let status = self
            .keys()
            .create_key(need.probe())
            .await
            .expect_err(&format!(
                "GetTokenInfo refuses {listed}, yet CreateKey for {need:?} succeeded"
            ));
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{need:?}: {status:?}"
        );
        assert_eq!(
            reason_of(&status).as_deref(),
            Some("MECHANISM_NOT_SUPPORTED"),
            "{need:?}: {status:?}"
        );
        assert!(
            refused
                .iter()
                .any(|r| !r.mechanism.is_empty() && status.message().contains(&r.mechanism)),
            "{need:?}: the refusal names none of the mechanisms GetTokenInfo lists ({listed}): {}",
            status.message()
        );
        eprintln!("---- {need:?} refused on this token ({listed}); refusal checked");
        false
    }
}
