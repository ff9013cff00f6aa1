//! Crash under load, five times in a row: mixed calls (CreateKey, Sign, Encrypt and
//! Decrypt, alias changes, the three import calls) from 16 clients, then `kill -9` at a
//! moment chosen at random, then a restart. After every crash:
//! - offline, before the restart, the chain verifies except at most a torn last line;
//! - every call a client saw answered has its record (matched by request id), and
//!   `hsmctl audit verify` accepts the log;
//! - start-up reconciliation finds no key in the store without its token objects and no
//!   key objects in the token without their key (`missing=0 orphans=0`: what a crash
//!   left half-made is destroyed, `destroyed=N`);
//! - every key made so far still signs.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hsmd_e2e::{
    Daemon, args,
    crypt::{decrypt, encrypt},
    import::{openssl_genpkey, openssl_wrap},
    request_id,
    tools::write_file,
    v1::{
        CreateAliasRequest, CreateKeyRequest, EncryptionAlgorithm, GetParametersForImportRequest,
        ImportKeyMaterialRequest, KeyOrigin, KeySpec, KeyUsage, MessageType, SignRequest,
        SigningAlgorithm, UpdateAliasRequest, key_service_client::KeyServiceClient,
    },
};
use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::Channel;

const ROUNDS: usize = 5;
const CLIENTS: usize = 16;

/// What the clients share: the keys they use and where answered request ids go.
#[derive(Clone)]
struct Load {
    signer: String,
    aes: String,
    alias: String,
    scratch: PathBuf,
    material: (PathBuf, Vec<u8>),
    answered: UnboundedSender<String>,
    created: UnboundedSender<String>,
}

impl Load {
    fn answered<T>(&self, r: &tonic::Response<T>) {
        let _ = self.answered.send(request_id(r.metadata(), "load call"));
    }

    /// One client's calls until the daemon goes away.
    async fn run(self, client: usize, mut keys: KeyServiceClient<Channel>) {
        for i in 0.. {
            let ok = match (client + i) % 6 {
                0 => self.create(&mut keys).await,
                1 | 2 => self.sign(&mut keys, i).await,
                3 => self.encrypt_decrypt(&mut keys, i).await,
                4 => self.move_alias(&mut keys).await,
                _ if client.is_multiple_of(4) => self.import(&mut keys).await,
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
        let alg = hsmd_e2e::v1::WrappingAlgorithm::RsaAesKeyWrapSha1;
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

fn rand_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kill_9s_under_mixed_load_lose_nothing() {
    let mut d = Daemon::start().await;
    let mut keys = d.keys();
    let signer = hsmd_e2e::algorithms::create_key(&mut keys, KeySpec::EcP256, "").await;
    let aes =
        hsmd_e2e::crypt::create_key(&mut keys, KeySpec::Aes256, KeyUsage::EncryptDecrypt, "").await;
    let alias = "alias/crash-moving".to_string();
    keys.create_alias(CreateAliasRequest {
        alias_name: alias.clone(),
        target_key_id: signer.clone(),
    })
    .await
    .expect("CreateAlias");
    let pem = d.scratch().join("audit.pem");
    assert!(
        d.hsmctl(args!["audit", "public-key", "--out", &pem])
            .success()
    );
    let material = openssl_genpkey(&d.scratch(), "imported", KeySpec::EcP256);
    let mut answered: HashSet<String> = HashSet::new();
    let mut created: Vec<String> = Vec::new();

    for round in 1..=ROUNDS {
        let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel();
        let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel();
        let load = Load {
            signer: signer.clone(),
            aes: aes.clone(),
            alias: alias.clone(),
            scratch: d.scratch(),
            material: (material.pkcs8_der.clone(), material.public_der.clone()),
            answered: answered_tx,
            created: created_tx,
        };
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(load.clone().run(c, d.keys())))
            .collect();
        drop(load);
        let delay = 800 + rand_u64() % 1700;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.kill_hard();
        for c in clients {
            c.await.expect("a client panicked");
        }
        let before = answered.len();
        while let Some(id) = answered_rx.recv().await {
            answered.insert(id);
        }
        while let Some(id) = created_rx.recv().await {
            created.push(id);
        }
        assert!(
            answered.len() >= before + 10,
            "round {round}: the load hardly ran ({} calls answered)",
            answered.len() - before
        );
        eprintln!(
            "---- round {round}: kill -9 after {delay} ms, {} calls answered",
            answered.len() - before
        );

        d.verify_offline_after_crash(&pem, &format!("round {round}"));
        d.start_again().await;
        let logged: HashSet<String> = d
            .audit_lines()
            .iter()
            .map(|l| l.str("request_id").to_owned())
            .collect();
        let missing: Vec<&String> = answered.iter().filter(|r| !logged.contains(*r)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: answered calls without a record: {missing:?}"
        );
        let out = d.hsmctl(["audit", "verify"]);
        assert!(
            out.success() && out.stdout.trim_start().starts_with("ok"),
            "round {round}: hsmctl audit verify\n{}",
            out.describe()
        );
        let log = d.stderr_text();
        let report = log
            .lines()
            .find(|l| l.contains("token and store reconciled"))
            .unwrap_or_else(|| panic!("round {round}: no reconciliation report:\n{log}"));
        assert!(
            report.contains("orphans=0") && report.contains("missing=0"),
            "round {round}: the token and the store disagree after the crash: {report}"
        );
        eprintln!(
            "---- round {round}: {}",
            report.split("reconciled").nth(1).unwrap_or(report).trim()
        );
        let mut keys = d.keys();
        for key in std::iter::once(&signer).chain(&created) {
            let r = keys
                .sign(SignRequest {
                    key_id: key.clone(),
                    algorithm: SigningAlgorithm::EcdsaSha256 as i32,
                    message_type: MessageType::Raw as i32,
                    message: b"after the crash".to_vec(),
                })
                .await;
            assert!(
                r.is_ok(),
                "round {round}: key {key} no longer signs: {:?}",
                r.err()
            );
        }
    }
}
