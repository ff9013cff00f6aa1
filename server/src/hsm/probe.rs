//! Start-up probe of what the token can do, and the key specs and signing algorithms
//! hsmd offers on it as a result. Nothing is faked: a spec whose mechanisms the token
//! lacks (SM2 on SoftHSM2; RSA_4096, ED25519 and AES-GCM on tpm2-pkcs11) is not
//! offered, each refusal names the mechanism (or key size) it lacks, and `hsmctl token
//! info` says why. Decided from the mechanism list, its key size ranges and trials on
//! throw-away keys, never from the token's manufacturer or model.

use cryptoki::mechanism::MechanismType;

pub(crate) use super::refusals::Refusal;
use super::refusals::refusals;
use crate::domain::spec::{EncryptionAlgorithm, HashAlg, KeySpec, SigningAlgorithm};

/// One mechanism hsmd may use, and whether the token reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capability {
    pub(crate) mechanism: &'static str,
    pub(crate) supported: bool,
    pub(crate) note: String,
}

/// How RSAES_OAEP_SHA_256 ciphertexts are decrypted on this token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum OaepPath {
    /// CKM_RSA_PKCS_OAEP with SHA-256 in the token.
    Token,
    /// CKM_RSA_X_509 in the token, then the constant-time OAEP decode in hsmd.
    HostDecode,
    /// Neither works: not offered.
    #[default]
    Unavailable,
}

/// What trying the encryption mechanisms on probe keys found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EncryptionProbe {
    /// AES-GCM encrypt and decrypt round trip in the token.
    pub(crate) aes_gcm: bool,
    /// CKM_RSA_PKCS_OAEP with SHA-1 decrypts a standard OAEP-SHA-1 ciphertext.
    pub(crate) oaep_sha1: bool,
    pub(crate) oaep_sha256: OaepPath,
}

/// Where one encryption algorithm's work happens on this token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlgorithmPath {
    pub(crate) algorithm: EncryptionAlgorithm,
    pub(crate) offered: bool,
    pub(crate) path: String,
}

/// Whether the token makes session key objects and copies objects (import needs both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ObjectSupport {
    pub(crate) session_keys: bool,
    pub(crate) copy: bool,
}

/// What the probe found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capabilities {
    pub(crate) mechanisms: Vec<Capability>,
    /// Features refused on this token, each naming the mechanism it lacks.
    pub(crate) refusals: Vec<Refusal>,
    /// The token sets CKA_SIGN, CKA_DECRYPT, CKA_VERIFY and CKA_ENCRYPT on every key pair
    /// it generates and refuses a template that sets one false (tpm2-pkcs11: the TPM key
    /// template carries both sign and decrypt): hsmd then leaves the false ones out and
    /// a key's usage is enforced by hsmd alone.
    pub(crate) usage_forced_by_token: bool,
    /// CKM_RSA_PKCS_OAEP carries CKF_UNWRAP (C_GetMechanismInfo): import can unwrap with
    /// it in the token. tpm2-pkcs11 lists OAEP for encrypt and decrypt only.
    pub(crate) oaep_unwrap: bool,
    /// Session key objects and C_CopyObject, as the object probe found them.
    pub(crate) objects: ObjectSupport,
    pub(crate) key_specs: Vec<KeySpec>,
    pub(crate) signing_algorithms: Vec<SigningAlgorithm>,
    pub(crate) encryption_algorithms: Vec<EncryptionAlgorithm>,
    pub(crate) encryption: EncryptionProbe,
    pub(crate) algorithm_paths: Vec<AlgorithmPath>,
    /// The hashes for which the token lists CKM_ECDSA_SHA*: RAW ECDSA messages are then
    /// hashed in the token, as RSA ones are.
    pub(crate) ecdsa_hashes: Vec<HashAlg>,
}

const WANTED: &[(MechanismType, &str, &str)] = &[
    (
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
        "RSA key generation",
    ),
    (
        MechanismType::SHA256_RSA_PKCS,
        "CKM_SHA256_RSA_PKCS",
        "RSA_PKCS1_SHA_256 RAW",
    ),
    (
        MechanismType::SHA384_RSA_PKCS,
        "CKM_SHA384_RSA_PKCS",
        "RSA_PKCS1_SHA_384 RAW",
    ),
    (
        MechanismType::SHA512_RSA_PKCS,
        "CKM_SHA512_RSA_PKCS",
        "RSA_PKCS1_SHA_512 RAW",
    ),
    (
        MechanismType::RSA_PKCS,
        "CKM_RSA_PKCS",
        "RSA_PKCS1_* DIGEST (DigestInfo built by hsmd)",
    ),
    (
        MechanismType::SHA256_RSA_PKCS_PSS,
        "CKM_SHA256_RSA_PKCS_PSS",
        "RSA_PSS_SHA_256 RAW",
    ),
    (
        MechanismType::SHA384_RSA_PKCS_PSS,
        "CKM_SHA384_RSA_PKCS_PSS",
        "RSA_PSS_SHA_384 RAW",
    ),
    (
        MechanismType::SHA512_RSA_PKCS_PSS,
        "CKM_SHA512_RSA_PKCS_PSS",
        "RSA_PSS_SHA_512 RAW",
    ),
    (
        MechanismType::RSA_PKCS_PSS,
        "CKM_RSA_PKCS_PSS",
        "RSA_PSS_* DIGEST",
    ),
    (
        MechanismType::ECC_KEY_PAIR_GEN,
        "CKM_EC_KEY_PAIR_GEN",
        "EC P-256/P-384 key generation",
    ),
    (
        MechanismType::ECDSA,
        "CKM_ECDSA",
        "ECDSA_SHA_256/384 over a digest (DIGEST requests; RAW ones when the token lacks CKM_ECDSA_SHA*)",
    ),
    (
        MechanismType::ECDSA_SHA256,
        "CKM_ECDSA_SHA256",
        "ECDSA_SHA_256 RAW: the token hashes (without it hsmd hashes, token signs)",
    ),
    (
        MechanismType::ECDSA_SHA384,
        "CKM_ECDSA_SHA384",
        "ECDSA_SHA_384 RAW: the token hashes (without it hsmd hashes, token signs)",
    ),
    (
        MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        "Ed25519 key generation",
    ),
    (
        MechanismType::EDDSA,
        "CKM_EDDSA",
        "ED25519_SHA_512 (pure Ed25519)",
    ),
    (
        MechanismType::AES_KEY_GEN,
        "CKM_AES_KEY_GEN",
        "AES key generation",
    ),
    (
        MechanismType::AES_GCM,
        "CKM_AES_GCM",
        "AES-256-GCM encryption",
    ),
    (
        MechanismType::RSA_PKCS_OAEP,
        "CKM_RSA_PKCS_OAEP",
        "RSAES_OAEP decryption and unwrap",
    ),
    (
        MechanismType::RSA_X_509,
        "CKM_RSA_X_509",
        "raw RSA for host-side OAEP-SHA-256 decode",
    ),
    (
        MechanismType::AES_KEY_WRAP_PAD,
        "CKM_AES_KEY_WRAP_PAD",
        "RFC 5649 unwrap for import",
    ),
];

impl Capabilities {
    /// Derives the capabilities from the token's mechanism list.
    pub(crate) fn from_mechanisms(list: &[MechanismType]) -> Self {
        let have = list;
        let mechanisms = WANTED
            .iter()
            .map(|(m, name, use_)| Capability {
                mechanism: name,
                supported: have.contains(m),
                note: use_.to_string(),
            })
            .chain(std::iter::once(Capability {
                mechanism: "CKM_SM2 / CKM_SM3 (vendor)",
                supported: false,
                note: "not reported by this token: SM2 keys are refused".into(),
            }))
            .collect();
        let all = |ms: &[MechanismType]| ms.iter().all(|m| have.contains(m));
        let mut key_specs = Vec::new();
        let mut signing_algorithms = Vec::new();
        if all(&[
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
        ]) {
            key_specs.extend([KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096]);
            use SigningAlgorithm::*;
            let rsa = [
                (RsaPkcs1Sha256, MechanismType::SHA256_RSA_PKCS),
                (RsaPkcs1Sha384, MechanismType::SHA384_RSA_PKCS),
                (RsaPkcs1Sha512, MechanismType::SHA512_RSA_PKCS),
                (RsaPssSha256, MechanismType::SHA256_RSA_PKCS_PSS),
                (RsaPssSha384, MechanismType::SHA384_RSA_PKCS_PSS),
                (RsaPssSha512, MechanismType::SHA512_RSA_PKCS_PSS),
            ];
            for (alg, m) in rsa {
                let bare = if alg.name().contains("PSS") {
                    MechanismType::RSA_PKCS_PSS
                } else {
                    MechanismType::RSA_PKCS
                };
                if all(&[m, bare]) {
                    signing_algorithms.push(alg);
                }
            }
        }
        if all(&[MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA]) {
            key_specs.extend([KeySpec::EcP256, KeySpec::EcP384]);
            signing_algorithms
                .extend([SigningAlgorithm::EcdsaSha256, SigningAlgorithm::EcdsaSha384]);
        }
        if all(&[
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ]) {
            key_specs.push(KeySpec::Ed25519);
            signing_algorithms.push(SigningAlgorithm::Ed25519);
        }
        // hsmd's AES keys do AES-256-GCM and nothing else: no GCM, no AES keys.
        if all(&[MechanismType::AES_KEY_GEN, MechanismType::AES_GCM]) {
            key_specs.push(KeySpec::Aes256);
        }
        let refusals = refusals(have, &key_specs, &signing_algorithms);
        let ecdsa_hashes = super::mechanisms::ecdsa_hashes(have);
        Capabilities {
            mechanisms,
            refusals,
            key_specs,
            signing_algorithms,
            ecdsa_hashes,
            ..Default::default()
        }
    }

    /// Drops the RSA specs whose size is outside the token's CKM_RSA_PKCS_KEY_PAIR_GEN
    /// range (C_GetMechanismInfo, in bits; a maximum of 0 means "not reported").
    pub(crate) fn with_rsa_key_sizes(mut self, min: usize, max: usize) -> Self {
        if max == 0 {
            return self;
        }
        let note = format!("RSA key generation ({min}..{max} bits)");
        for c in &mut self.mechanisms {
            if c.mechanism == "CKM_RSA_PKCS_KEY_PAIR_GEN" && c.supported {
                c.note = note.clone();
            }
        }
        for spec in [KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096] {
            let bits = spec.rsa_bits().unwrap_or(0) as usize;
            if self.offers_spec(spec) && !(min..=max).contains(&bits) {
                self.key_specs.retain(|s| *s != spec);
                self.refusals.push(Refusal {
                    feature: spec.name().to_string(),
                    mechanism: "CKM_RSA_PKCS_KEY_PAIR_GEN",
                    why: format!("the token generates RSA keys of {min}..{max} bits only"),
                });
            }
        }
        self
    }

    /// Records the object probe, as two rows of the capability table.
    pub(crate) fn with_objects(mut self, objects: ObjectSupport) -> Self {
        self.mechanisms.extend([
            Capability {
                mechanism: "session key objects (CKA_TOKEN false)",
                supported: objects.session_keys,
                note: "import checks unwrapped material in a session object; probes use them".into(),
            },
            Capability {
                mechanism: "C_CopyObject",
                supported: objects.copy,
                note: "import copies checked material into a token object; keys are used through session copies where it works".into(),
            },
        ]);
        self.objects = objects;
        self
    }

    /// The refusal of `feature` (a spec or algorithm name), if this token refuses it.
    pub(crate) fn refusal(&self, feature: &str) -> Option<&Refusal> {
        self.refusals.iter().find(|r| r.feature == feature)
    }

    /// True if CreateKey may make keys of `spec` on this token.
    pub(crate) fn offers_spec(&self, spec: KeySpec) -> bool {
        self.key_specs.contains(&spec)
    }

    /// True if Sign may use `alg` on this token.
    pub(crate) fn offers_algorithm(&self, alg: SigningAlgorithm) -> bool {
        self.signing_algorithms.contains(&alg)
    }

    /// True if Encrypt/Decrypt may use `alg` on this token.
    pub(crate) fn offers_encryption(&self, alg: EncryptionAlgorithm) -> bool {
        self.encryption_algorithms.contains(&alg)
    }

    /// Records what the encryption probe found: the algorithms offered and the path
    /// each one takes (for the start-up log and `hsmctl token info`).
    pub(crate) fn with_encryption(mut self, probe: EncryptionProbe) -> Self {
        use EncryptionAlgorithm::*;
        let rsa = self.key_specs.contains(&KeySpec::Rsa2048);
        let oaep256 = match probe.oaep_sha256 {
            OaepPath::Token => "decrypt: CKM_RSA_PKCS_OAEP (SHA-256, MGF1-SHA-256) in the token",
            OaepPath::HostDecode => {
                "decrypt: CKM_RSA_X_509 private operation in the token + constant-time OAEP decode in hsmd (the token refuses OAEP with SHA-256)"
            }
            OaepPath::Unavailable => {
                "not offered: the token can do neither OAEP-SHA-256 nor CKM_RSA_X_509"
            }
        };
        let paths = [
            (
                SymmetricDefault,
                probe.aes_gcm && self.key_specs.contains(&KeySpec::Aes256),
                if probe.aes_gcm {
                    "encrypt and decrypt: CKM_AES_GCM in the token (96-bit IV from C_GenerateRandom, 128-bit tag); data keys from C_GenerateRandom"
                } else if self.refusal(SymmetricDefault.name()).is_some() {
                    "refused: the token lacks CKM_AES_GCM (Encrypt, GenerateDataKey and AES keys need it)"
                } else {
                    "not offered: AES-GCM round trip failed on this token"
                },
            ),
            (
                RsaesOaepSha256,
                rsa && probe.oaep_sha256 != OaepPath::Unavailable,
                oaep256,
            ),
            (
                RsaesOaepSha1,
                rsa && probe.oaep_sha1,
                if probe.oaep_sha1 {
                    "decrypt: CKM_RSA_PKCS_OAEP (SHA-1, MGF1-SHA-1) in the token"
                } else {
                    "not offered: the token's OAEP-SHA-1 failed"
                },
            ),
            (
                RsaesPkcs1V15,
                false,
                "refused: PKCS#1 v1.5 decryption is a padding oracle; use RSAES_OAEP_SHA_256",
            ),
        ];
        if !probe.aes_gcm && self.refusal(SymmetricDefault.name()).is_none() {
            self.refusals.push(Refusal {
                feature: SymmetricDefault.name().to_string(),
                mechanism: "CKM_AES_GCM",
                why: "an AES-GCM round trip on a probe key failed".into(),
            });
        }
        self.encryption = probe;
        self.encryption_algorithms = paths
            .iter()
            .filter(|(_, offered, _)| *offered)
            .map(|(a, _, _)| *a)
            .collect();
        self.algorithm_paths = paths
            .into_iter()
            .map(|(algorithm, offered, path)| AlgorithmPath {
                algorithm,
                offered,
                path: if offered && algorithm != SymmetricDefault {
                    format!("{path}; encrypt: OAEP with the public key in hsmd")
                } else {
                    path.to_string()
                },
            })
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_needs_both_mechanisms() {
        let caps = Capabilities::from_mechanisms(&[MechanismType::ECC_EDWARDS_KEY_PAIR_GEN]);
        assert!(!caps.offers_spec(KeySpec::Ed25519));
        let caps = Capabilities::from_mechanisms(&[
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ]);
        assert!(caps.offers_spec(KeySpec::Ed25519));
        assert!(caps.offers_algorithm(SigningAlgorithm::Ed25519));
        assert!(!caps.offers_spec(KeySpec::Sm2));
    }

    #[test]
    fn encryption_paths_follow_the_probe() {
        let caps = Capabilities::from_mechanisms(&[
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
            MechanismType::AES_KEY_GEN,
            MechanismType::AES_GCM,
        ])
        .with_encryption(EncryptionProbe {
            aes_gcm: true,
            oaep_sha1: true,
            oaep_sha256: OaepPath::HostDecode,
        });
        use EncryptionAlgorithm::*;
        assert_eq!(
            caps.encryption_algorithms,
            [SymmetricDefault, RsaesOaepSha256, RsaesOaepSha1]
        );
        assert!(!caps.offers_encryption(RsaesPkcs1V15));
        let p256 = caps
            .algorithm_paths
            .iter()
            .find(|p| p.algorithm == RsaesOaepSha256)
            .unwrap();
        assert!(p256.path.contains("CKM_RSA_X_509"), "{}", p256.path);
        let caps = Capabilities::from_mechanisms(&[]).with_encryption(EncryptionProbe::default());
        assert!(caps.encryption_algorithms.is_empty());
    }

    #[test]
    fn rsa_pss_needs_the_bare_mechanism_for_digests() {
        let caps = Capabilities::from_mechanisms(&[
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
            MechanismType::SHA256_RSA_PKCS,
            MechanismType::SHA256_RSA_PKCS_PSS,
        ]);
        assert!(caps.offers_algorithm(SigningAlgorithm::RsaPkcs1Sha256));
        assert!(!caps.offers_algorithm(SigningAlgorithm::RsaPssSha256));
        assert!(
            caps.mechanisms
                .iter()
                .any(|c| c.mechanism.contains("SM2") && !c.supported)
        );
    }
}
