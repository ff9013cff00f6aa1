//! Mixed load for the fault tests and the soak: clients that call CreateKey, Sign,
//! Encrypt and Decrypt, alias changes and the three import calls in a fixed rotation
//! until the daemon goes away, reporting every request id that was answered (so a test
//! can check each has its audit record) and every key made.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tonic::transport::Channel;

use crate::{
    Instance,
    crypt::{decrypt, encrypt},
    import::{openssl_genpkey, openssl_wrap},
    request_id,
    tools::write_file,
    v1::{
        CreateKeyRequest, EncryptionAlgorithm, GetParametersForImportRequest,
        ImportKeyMaterialRequest, KeyOrigin, KeySpec, KeyUsage, MessageType, SignRequest,
        SigningAlgorithm, UpdateAliasRequest, key_service_client::KeyServiceClient,
    },
};

/// What a load needs on its daemon, made once: the keys, the alias, the key to import.
#[derive(Clone)]
pub struct Fixture {
    /// A P-256 SIGN_VERIFY key.
    pub signer: String,
    /// An AES_256 ENCRYPT_DECRYPT key.
    pub aes: String,
    /// An alias the clients move between `signer` and `aes`.
    pub alias: String,
    scratch: PathBuf,
    material: (PathBuf, Vec<u8>),
}

impl Fixture {
    /// Makes the keys and the alias `alias` on daemon `d`, and a P-256 key to import.
    pub async fn make(d: &Instance, alias: &str) -> Fixture {
        let mut keys = d.keys();
        let signer = crate::algorithms::create_key(&mut keys, KeySpec::EcP256, "").await;
        let aes =
            crate::crypt::create_key(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt, "")
                .await;
        keys.create_alias(crate::v1::CreateAliasRequest {
            alias_name: alias.to_string(),
            target_key_id: signer.clone(),
        })
        .await
        .expect("CreateAlias");
        let material = openssl_genpkey(&d.scratch(), "imported", KeySpec::EcP256);
        Fixture {
            signer,
            aes,
            alias: alias.to_string(),
            scratch: d.scratch(),
            material: (material.pkcs8_der, material.public_der),
        }
    }

    /// Starts `clients` clients on `d`, each calling until the daemon goes away. One round
    /// in `create_every` of each client makes a key (CreateKey, or an import): 1 where
    /// half-made keys are the point (the crash test), more for a long soak, whose token
    /// would otherwise fill with keys; 0 for never.
    pub fn start(&self, d: &Instance, clients: usize, create_every: usize) -> Running {
        let (answered_tx, answered) = tokio::sync::mpsc::unbounded_channel();
        let (created_tx, created) = tokio::sync::mpsc::unbounded_channel();
        let load = Load {
            signer: self.signer.clone(),
            aes: self.aes.clone(),
            alias: self.alias.clone(),
            scratch: self.scratch.clone(),
            material: self.material.clone(),
            answered: answered_tx,
            created: created_tx,
            create_every,
        };
        let clients = (0..clients)
            .map(|c| tokio::spawn(load.clone().run(c, d.keys())))
            .collect();
        Running {
            clients,
            answered,
            created,
        }
    }
}

/// A load under way.
pub struct Running {
    clients: Vec<tokio::task::JoinHandle<()>>,
    answered: UnboundedReceiver<String>,
    created: UnboundedReceiver<String>,
}

impl Running {
    /// Adds the request ids answered since the last call to `into`.
    pub fn answered_so_far(&mut self, into: &mut HashSet<String>) {
        while let Ok(id) = self.answered.try_recv() {
            into.insert(id);
        }
    }

    /// Once the daemon has gone away: waits for the clients (panics if one panicked),
    /// adds the answered request ids to `answered` and returns the keys made.
    pub async fn finish(mut self, answered: &mut HashSet<String>) -> Vec<String> {
        for c in self.clients {
            c.await.expect("a load client panicked");
        }
        while let Some(id) = self.answered.recv().await {
            answered.insert(id);
        }
        let mut made = Vec::new();
        while let Some(id) = self.created.recv().await {
            made.push(id);
        }
        made
    }
}

/// What the clients share: the keys they use and where answered request ids go.
#[derive(Clone)]
struct Load {
    signer: String,
    aes: String,
    alias: String,
    /// Where the import calls write their files.
    scratch: PathBuf,
    /// A P-256 private key to import (PKCS#8 DER file) and its public key (DER).
    material: (PathBuf, Vec<u8>),
    /// Every answered call's request id.
    answered: UnboundedSender<String>,
    /// Every key made (created or imported).
    created: UnboundedSender<String>,
    /// 1 in how many rounds makes a key (0: never).
    create_every: usize,
}

impl Load {
    fn answered<T>(&self, r: &tonic::Response<T>) {
        let _ = self.answered.send(request_id(r.metadata(), "load call"));
    }

    /// One client's calls until the daemon goes away.
    async fn run(self, client: usize, mut keys: KeyServiceClient<Channel>) {
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
