//! The calls `hsmd-bench audit` writes: varied principals, methods, key ids, aliases,
//! outcomes and peers, as a busy hsmd would log them; the same index gives the same
//! facts (only the request id is random).

use hsmd::audit_writer::{AuditEvent, Outcome};

/// Who calls (SAN URIs, a KMS plugin socket, certificate CNs).
pub(super) const PRINCIPALS: &[&str] = &[
    "spiffe://corp/ns/payments/sa/api",
    "spiffe://corp/ns/payments/sa/batch",
    "spiffe://corp/ns/billing/sa/invoicer",
    "spiffe://corp/ns/identity/sa/token-issuer",
    "spiffe://corp/ns/search/sa/indexer",
    "spiffe://corp/ns/ledger/sa/writer",
    "spiffe://corp/ns/ledger/sa/reader",
    "spiffe://corp/ns/ci/sa/release-signer",
    "spiffe://corp/ns/backup/sa/agent",
    "spiffe://corp/ns/mail/sa/dkim",
    "kubernetes:/run/hsmd/kms.sock",
    "ops-admin",
    "security-review",
];

/// A varied, realistic call record; the same `i` gives the same facts.
pub(super) fn event(i: u64) -> AuditEvent {
    let h = (i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let pick = |n: usize, shift: u32| ((h >> shift) as usize) % n;
    let key = |k: u64| {
        let k = k.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            k >> 32,
            (k >> 16) & 0xffff,
            k & 0xfff,
            (k >> 20) & 0xfff,
            k & 0xffff_ffff_ffff
        )
    };
    let (method, algorithm, message_type, keyed) = [
        ("Sign", "ECDSA_SHA_256", "DIGEST", true),
        ("Sign", "RSA_PKCS1_SHA_256", "RAW", true),
        ("Sign", "ECDSA_SHA_256", "RAW", true),
        ("Verify", "ECDSA_SHA_256", "DIGEST", true),
        ("Encrypt", "SYMMETRIC_DEFAULT", "", true),
        ("Decrypt", "SYMMETRIC_DEFAULT", "", true),
        ("GenerateDataKey", "AES_256", "", true),
        ("GetPublicKey", "", "", true),
        ("DescribeKey", "", "", true),
        ("ListKeys", "", "", false),
        ("CreateKey", "EC_P256", "", true),
    ][pick(11, 3)];
    let (outcome, status, reason) = match pick(200, 17) {
        0..=3 => (Outcome::Denied, "PERMISSION_DENIED", "POLICY_DENIED"),
        4..=6 => (Outcome::Throttled, "RESOURCE_EXHAUSTED", "RATE_LIMITED"),
        7 => (Outcome::Invalid, "INVALID_ARGUMENT", "BAD_MESSAGE"),
        8 => (Outcome::Failed, "UNAVAILABLE", "TOKEN_UNAVAILABLE"),
        _ => (Outcome::Ok, "OK", ""),
    };
    let key_no = (h >> 40) % 500;
    let hashed =
        matches!(method, "Sign" | "Verify" | "Encrypt" | "Decrypt") && outcome == Outcome::Ok;
    AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: PRINCIPALS[pick(PRINCIPALS.len(), 29)].to_string(),
        peer: format!(
            "10.{}.{}.{}:{}",
            pick(4, 7),
            pick(250, 11),
            pick(250, 19),
            30000 + pick(30000, 23)
        ),
        method: format!("/hsmd.v1.KeyService/{method}"),
        key_id: if keyed { key(key_no) } else { String::new() },
        alias: if keyed && key_no.is_multiple_of(4) {
            format!("alias/svc-{key_no}")
        } else {
            String::new()
        },
        algorithm: algorithm.into(),
        message_type: message_type.into(),
        input_sha256: if hashed {
            format!(
                "{:016x}{:016x}{:016x}{:016x}",
                h,
                h.rotate_left(16),
                !h,
                h.rotate_left(48)
            )
        } else {
            String::new()
        },
        outcome: Some(outcome),
        status: status.into(),
        reason: reason.into(),
        duration_us: 150 + (h >> 44) % 4000,
        ..Default::default()
    }
}
