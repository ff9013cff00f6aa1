//! The key material stays in the token: checked from outside hsmd with OpenSC's
//! `pkcs11-tool` and with `p11probe` (plain PKCS#11 calls in a process of its own),
//! against the daemon's own token through `DIR/softhsm2.conf`.

use std::path::Path;

use hsmd_e2e::{
    Daemon,
    algorithms::create_key,
    pkcs11::{P11Object, key_id_hex},
    v1::{GetTokenInfoRequest, GetTokenInfoResponse, KeySpec},
};

const SPECS: [KeySpec; 4] = [
    KeySpec::Rsa2048,
    KeySpec::EcP256,
    KeySpec::EcP384,
    KeySpec::Ed25519,
];

async fn token_info(d: &Daemon) -> GetTokenInfoResponse {
    d.token()
        .get_token_info(GetTokenInfoRequest {})
        .await
        .expect("GetTokenInfo")
        .into_inner()
}

fn with_label<'a>(objects: &'a [P11Object], label: &str) -> Vec<&'a P11Object> {
    objects
        .iter()
        .filter(|o| o.field("label") == label)
        .collect()
}

#[tokio::test]
async fn pkcs11_tool_sees_sensitive_never_extractable_private_keys() {
    let d = Daemon::start().await;
    let mut keys = Vec::new();
    for spec in SPECS {
        if !d.offers_spec(spec).await {
            continue;
        }
        keys.push((spec, create_key(&mut d.keys(), spec, "").await));
    }
    let objects = d.token_objects(true);
    let public_view = d.token_objects(false);
    let info = token_info(&d).await;
    for (spec, key_id) in &keys {
        let mine = with_label(&objects, key_id);
        let private: Vec<_> = mine.iter().filter(|o| o.is_private_key()).collect();
        let public: Vec<_> = mine.iter().filter(|o| o.is_public_key()).collect();
        assert_eq!(
            private.len(),
            1,
            "{spec:?} {key_id}: private objects labelled with the key id: {mine:#?}"
        );
        assert_eq!(
            public.len(),
            1,
            "{spec:?} {key_id}: public objects labelled with the key id: {mine:#?}"
        );
        let obj = private[0];
        assert_eq!(
            obj.field("ID"),
            key_id_hex(key_id),
            "{spec:?}: CKA_ID is the UUID's 16 bytes"
        );
        assert_eq!(
            public[0].field("ID"),
            key_id_hex(key_id),
            "{spec:?}: public CKA_ID"
        );
        // The exact words pkcs11-tool prints for CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE and
        // CKA_NEVER_EXTRACTABLE (and no bare "extractable", which is CKA_EXTRACTABLE).
        let access = obj.field("Access");
        assert!(
            access.starts_with("sensitive, always sensitive, never extractable"),
            "{spec:?}: private key Access is {access:?}"
        );
        assert!(
            !obj.words("Access").iter().any(|w| w == "extractable"),
            "{spec:?}: CKA_EXTRACTABLE is true: {access:?}"
        );
        let usage = obj.words("Usage");
        assert!(
            usage.iter().any(|u| u == "sign"),
            "{spec:?}: private key cannot sign: {usage:?}"
        );
        // A token that gives every key pair decrypt (tpm2-pkcs11) says so in token info;
        // hsmd alone keeps such a key from decrypting there.
        let forced = (!info.usage_enforced_by_token).then_some("decrypt");
        for forbidden in ["decrypt", "unwrap", "derive", "encrypt", "wrap"] {
            if Some(forbidden) == forced {
                continue;
            }
            assert!(
                !usage.iter().any(|u| u == forbidden),
                "{spec:?}: a SIGN_VERIFY private key allows {forbidden}: {usage:?}"
            );
        }
        // CKA_PRIVATE: without login the private object is invisible.
        assert!(
            with_label(&public_view, key_id)
                .iter()
                .all(|o| !o.is_private_key()),
            "{spec:?}: private key visible without login (CKA_PRIVATE false)"
        );
    }
}

#[tokio::test]
async fn private_keys_cannot_be_read_or_wrapped_out_of_the_token() {
    let d = Daemon::start().await;
    let mut ids = Vec::new();
    for spec in SPECS {
        if !d.offers_spec(spec).await {
            continue;
        }
        ids.push(create_key(&mut d.keys(), spec, "").await);
    }
    for key_id in &ids {
        let out_file = d.scratch().join(format!("{key_id}.extracted"));
        let out = d.pkcs11_tool(
            true,
            &[
                "--read-object",
                "--type",
                "privkey",
                "--id",
                &key_id_hex(key_id),
                "--output-file",
                out_file.to_str().expect("utf-8 path"),
            ],
        );
        let written = std::fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
        assert_eq!(
            written,
            0,
            "pkcs11-tool read {written} bytes of private key {key_id}\n{}",
            out.describe()
        );
    }

    let probe = Path::new(env!("CARGO_BIN_EXE_p11probe"));
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let report = d.p11probe(probe, &id_refs);
    let info = token_info(&d).await;
    let can_wrap = report["wrapping_key"] == true;
    if can_wrap {
        assert_eq!(
            report["control_wrap"]["wrapped"], true,
            "the probe could not wrap even its own extractable key, so its test proves nothing: {report:#}"
        );
    } else {
        // No session AES key to wrap with (tpm2-pkcs11): then the token has no key wrap
        // at all, as GetTokenInfo says, and C_WrapKey cannot take the keys out either.
        assert!(
            info.capabilities
                .iter()
                .any(|c| c.mechanism == "CKM_AES_KEY_WRAP_PAD" && !c.supported),
            "the probe made no wrapping key, yet the token lists key wrap: {report:#}"
        );
    }
    for key_id in &ids {
        let k = &report["keys"][key_id.as_str()];
        assert_eq!(k["private_objects"], 1, "{key_id}: {k:#}");
        for (attr, want) in [
            ("token", true),
            ("private", true),
            ("sensitive", true),
            ("extractable", false),
            ("always_sensitive", true),
            ("never_extractable", true),
        ] {
            assert_eq!(
                k[attr],
                want,
                "{key_id}: CKA_{} should be {want}: {k:#}",
                attr.to_uppercase()
            );
        }
        assert_eq!(k["id_hex"], key_id_hex(key_id), "{key_id}: CKA_ID");
        let secret: Vec<&str> = [
            "value_attribute",
            "private_exponent_attribute",
            "prime_1_attribute",
        ]
        .iter()
        .map(|a| k[a].as_str().unwrap_or(""))
        .collect();
        assert!(
            secret.iter().all(|s| !s.starts_with("available")),
            "{key_id}: C_GetAttributeValue reveals secret key material: {k:#}"
        );
        // Each is refused as sensitive (SoftHSM2) or absent from the object altogether
        // (tpm2-pkcs11: the material exists only inside the TPM, wrapped by it).
        assert!(
            secret
                .iter()
                .all(|s| *s == "sensitive" || *s == "type_invalid"),
            "{key_id}: a secret attribute is neither sensitive nor absent: {k:#}"
        );
        if can_wrap {
            assert_eq!(
                k["wrap"]["wrapped"], false,
                "{key_id}: C_WrapKey exported the private key: {k:#}"
            );
        }
    }
}
