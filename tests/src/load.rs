//! Mixed load for the fault tests and the soak: clients that call CreateKey, Sign,
//! Encrypt and Decrypt, alias changes and the three import calls in a fixed rotation
//! until the daemon goes away, reporting every request id that was answered (so a test
//! can check each has its audit record) and every key made.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::Channel;

use crate::{
    crypt::{decrypt, encrypt},
    import::openssl_wrap,
    request_id,
    tools::write_file,
    v1::{
        CreateKeyRequest, EncryptionAlgorithm, GetParametersForImportRequest,
        ImportKeyMaterialRequest, KeyOrigin, KeySpec, KeyUsage, MessageType, SignRequest,
        SigningAlgorithm, UpdateAliasRequest, key_service_client::KeyServiceClient,
    },
};

/// What the clients share: the keys they use and where answered request ids go.
#[derive(Clone)]
pub struct Load {
    /// A P-256 SIGN_VERIFY key.
    pub signer: String,
    /// An AES_256 ENCRYPT_DECRYPT key.
    pub aes: String,
    /// An alias the clients move between `signer` and `aes`.
    pub alias: String,
    /// Where the import calls write their files.
    pub scratch: PathBuf,
    /// A P-256 private key to import (PKCS#8 DER file) and its public key (DER).
    pub material: (PathBuf, Vec<u8>),
    /// Every answered call's request id.
    pub answered: UnboundedSender<String>,
    /// Every key made (created or imported).
    pub created: UnboundedSender<String>,
    /// 1 in how many rounds makes a key (CreateKey, or an import): 1 for the crash test,
    /// where half-made keys are the point; more for a long soak, whose token would
    /// otherwise fill with keys; 0 for never.
    pub create_every: usize,
}

impl Load {
    fn answered<T>(&self, r: &tonic::Response<T>) {
        let _ = self.answered.send(request_id(r.metadata(), "load call"));
    }

    /// One client's calls until the daemon goes away.
    pub async fn run(self, client: usize, mut keys: KeyServiceClient<Channel>) {
        for i in 0usize.. {
            let makes = self.create_every > 0 && (i / 6).is_multiple_of(self.create_every);
            let ok = match (client + i) % 6 {
                0 if makes => self.create(&mut keys).await,
                1 | 2 => self.sign(&mut keys, i).await,
                3 => self.encrypt_decrypt(&mut keys, i).await,
                4 => self.move_alias(&mut keys).await,
                5 if makes && client.is_multiple_of(4) => self.import(&mut keys).await,
                _ => self.sign(&mut keys, i).await,
            };
            if !ok {
                return;
            }
        }
    }

    async fn create(&self, keys: &mut KeyServiceClient<Channel>) -> bool {
        let r = keys
            .create_key(CreateKeyRequest {
                spec: KeySpec::EcP256 as i32,
                usage: KeyUsage::SignVerify as i32,
                ..Default::default()
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        let id = r.into_inner().key.expect("metadata").key_id;
        let _ = self.created.send(id);
        true
    }

    async fn sign(&self, keys: &mut KeyServiceClient<Channel>, i: usize) -> bool {
        let r = keys
            .sign(SignRequest {
                key_id: self.signer.clone(),
                algorithm: SigningAlgorithm::EcdsaSha256 as i32,
                message_type: MessageType::Raw as i32,
                message: i.to_le_bytes().to_vec(),
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        true
    }

    async fn encrypt_decrypt(&self, keys: &mut KeyServiceClient<Channel>, i: usize) -> bool {
        let plaintext = format!("secret {i}").into_bytes();
        let sym = EncryptionAlgorithm::SymmetricDefault;
        let r = encrypt(keys, &self.aes, sym, &plaintext, b"").await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        let blob = r.into_inner().ciphertext;
        let r = decrypt(keys, &self.aes, sym, &blob, b"").await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        assert_eq!(r.into_inner().plaintext, plaintext, "round trip");
        true
    }

    /// Points the shared alias at the signer or the AES key, whichever it is not on.
    async fn move_alias(&self, keys: &mut KeyServiceClient<Channel>) -> bool {
        let target = if rand_u64().is_multiple_of(2) {
            &self.signer
        } else {
            &self.aes
        };
        let r = keys
            .update_alias(UpdateAliasRequest {
                alias_name: self.alias.clone(),
                target_key_id: target.clone(),
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        true
    }

    /// CreateKey EXTERNAL, GetParametersForImport, ImportKeyMaterial of one P-256 key.
    async fn import(&self, keys: &mut KeyServiceClient<Channel>) -> bool {
        let r = keys
            .create_key(CreateKeyRequest {
                spec: KeySpec::EcP256 as i32,
                usage: KeyUsage::SignVerify as i32,
                origin: KeyOrigin::External as i32,
                ..Default::default()
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        let key = r.into_inner().key.expect("metadata").key_id;
        let alg = crate::v1::WrappingAlgorithm::RsaAesKeyWrapSha1;
        let r = keys
            .get_parameters_for_import(GetParametersForImportRequest {
                key_id: key.clone(),
                wrapping_algorithm: alg as i32,
                ..Default::default()
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        let p = r.into_inner();
        let pem = write_file(
            &self.scratch,
            &format!("{key}.wrap.pem"),
            p.public_key_pem.as_bytes(),
        );
        let wrapped = openssl_wrap(&self.scratch, &pem, alg, &self.material.0);
        let r = keys
            .import_key_material(ImportKeyMaterialRequest {
                key_id: key.clone(),
                import_token: p.import_token,
                encrypted_key_material: wrapped,
                public_key_der: self.material.1.clone(),
                ..Default::default()
            })
            .await;
        let Ok(r) = r else { return false };
        self.answered(&r);
        let _ = self.created.send(key);
        true
    }
}

/// A cheap random number (the clock's nanoseconds, mixed).
pub fn rand_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17
}
