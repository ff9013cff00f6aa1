//! hsmctl's encryption commands end to end: `encrypt`/`decrypt` of small secrets (AES
//! blobs and RSA-OAEP), `datakey`, and `envelope encrypt|decrypt` of files: a 200 MB
//! file round trips with a flat memory profile (peak RSS of the hsmctl process, from
//! wait4), and truncated, chunk-swapped and altered envelope files are refused without
//! leaving plaintext behind.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use hsmd_e2e::{
    Daemon, Need, args,
    crypt::openssl_oaep_encrypt,
    tools::{workspace_bin, write_file},
};
use sha2::{Digest, Sha256};

/// `hsmctl key create --usage encrypt-decrypt`; returns the key id.
fn create(d: &Daemon, spec: &str, alias: &str) -> String {
    d.hsmctl_ok(args![
        "key",
        "create",
        "--spec",
        spec,
        "--usage",
        "encrypt-decrypt",
        "--alias",
        alias
    ])
}

#[tokio::test]
async fn hsmctl_encrypts_and_decrypts_small_secrets() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let dir = d.scratch();
    let key = create(&d, "AES_256", "secrets");
    let secret = write_file(&dir, "secret.txt", b"db password: hunter2\n");
    let blob = dir.join("secret.blob");
    let back = dir.join("secret.out");
    d.hsmctl_ok(args![
        "encrypt",
        "alias/secrets",
        "--in",
        secret,
        "--out",
        blob,
        "--aad",
        "app=billing"
    ]);
    assert_eq!(&fs::read(&blob).unwrap()[..4], b"HSMD");
    // No key named: the blob names it.
    d.hsmctl_ok(args![
        "decrypt",
        "--in",
        blob,
        "--out",
        back,
        "--aad",
        "app=billing"
    ]);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&secret).unwrap());
    let json = d.hsmctl_ok(args![
        "-o",
        "json",
        "decrypt",
        key,
        "--in",
        blob,
        "--out",
        back,
        "--aad",
        "app=billing"
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["algorithm"], "SYMMETRIC_DEFAULT");
    assert!(
        !json.contains("hunter2"),
        "json shows the plaintext: {json}"
    );
    // A wrong AAD: exit 2 with the reason on stderr.
    let out = d.hsmctl(args![
        "decrypt",
        "--in",
        blob,
        "--out",
        back,
        "--aad",
        "app=other"
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .starts_with("error: INVALID_ARGUMENT DECRYPTION_FAILED:"),
        "{}",
        out.describe()
    );

    // RSA: openssl encrypts with the exported public key, hsmctl decrypts.
    let rsa = create(&d, "RSA_2048", "rsa-inbox");
    let pem = dir.join("rsa.pub.pem");
    d.hsmctl_ok(args!["key", "public", rsa, "--pem", "--out", pem]);
    let ct = openssl_oaep_encrypt(&dir, &pem, "sha256", b"for the token only");
    let ct_path = write_file(&dir, "rsa.ct", &ct);
    let pt_path = dir.join("rsa.pt");
    d.hsmctl_ok(args![
        "decrypt",
        "alias/rsa-inbox",
        "--in",
        ct_path,
        "--out",
        pt_path,
        "--algorithm",
        "RSAES_OAEP_SHA_256"
    ]);
    assert_eq!(fs::read(&pt_path).unwrap(), b"for the token only");
    let out = d.hsmctl(args![
        "decrypt",
        "alias/rsa-inbox",
        "--in",
        ct_path,
        "--out",
        pt_path,
        "--algorithm",
        "RSAES_PKCS1_V1_5"
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("ALGORITHM_NOT_ALLOWED") && out.stderr.contains("OAEP"));
}

#[tokio::test]
async fn hsmctl_datakey_shows_plaintext_only_when_asked() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let dir = d.scratch();
    create(&d, "AES_256", "master");
    let table = d.hsmctl_ok(["datakey", "alias/master"]);
    assert!(table.contains("hidden"), "{table}");
    let json = d.hsmctl_ok(["-o", "json", "datakey", "alias/master"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v.get("plaintext_base64").is_none(), "{json}");
    let json = d.hsmctl_ok([
        "-o",
        "json",
        "datakey",
        "alias/master",
        "--spec",
        "AES_128",
        "--show-plaintext",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(v["plaintext_base64"].as_str().unwrap()).unwrap();
    assert_eq!(key.len(), 16);
    assert_eq!(v["key_spec"], "AES_128");
    let blob = b64
        .decode(v["ciphertext_blob_base64"].as_str().unwrap())
        .unwrap();
    let blob_path = write_file(&dir, "dk.blob", &blob);
    let out = dir.join("dk.key");
    d.hsmctl_ok(args!["decrypt", "--in", blob_path, "--out", out]);
    assert_eq!(
        fs::read(&out).unwrap(),
        key,
        "Decrypt(blob) is the data key"
    );
    let json = d.hsmctl_ok(["-o", "json", "datakey", "alias/master", "--no-plaintext"]);
    assert!(!json.contains("plaintext_base64"), "{json}");
    let out = d.hsmctl([
        "datakey",
        "alias/master",
        "--no-plaintext",
        "--show-plaintext",
    ]);
    out.expect_code(2);
    // A plaintext file is private to its owner.
    let key_file = dir.join("plain.key");
    d.hsmctl_ok(args![
        "datakey",
        "alias/master",
        "--plaintext-out",
        key_file
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(fs::read(&key_file).unwrap().len(), 32);
    // The audit log never holds the data key.
    let audit = d.audit_text();
    assert!(!audit.contains(&hex::encode(&key)));
    assert!(!audit.contains(&b64.encode(&key)));
}

/// Writes `size` bytes of a deterministic, incompressible-looking pattern.
fn write_pattern(path: &Path, size: usize) -> [u8; 32] {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut block = [0u8; 1 << 16];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n;
    }
    f.flush().unwrap();
    h.finalize().into()
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// Runs hsmctl and returns (exit code, stderr, peak RSS in KiB of that process).
fn hsmctl_rss(d: &Daemon, args: &[&std::ffi::OsStr]) -> (i32, String, i64) {
    let stderr_path = d.scratch().join("hsmctl-rss.stderr");
    let child = Command::new(workspace_bin("hsmctl"))
        .arg("--profile")
        .arg(d.profile_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn hsmctl");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid pointers; `child` is never waited on
    // through std afterwards.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        fs::read_to_string(&stderr_path).unwrap_or_default(),
        usage.ru_maxrss,
    )
}

#[tokio::test]
async fn envelope_round_trips_200_mb_with_flat_memory() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let dir = d.scratch();
    create(&d, "AES_256", "files");
    let size = 200 * 1024 * 1024;
    let plain = dir.join("big.bin");
    let digest = write_pattern(&plain, size);
    let sealed = dir.join("big.env");
    let opened = dir.join("big.out");
    let start = std::time::Instant::now();
    let (code, err, rss_enc) = hsmctl_rss(
        &d,
        &args![
            "envelope",
            "encrypt",
            "alias/files",
            "--in",
            plain,
            "--out",
            sealed
        ]
        .iter()
        .map(|a| a.as_os_str())
        .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "envelope encrypt: {err}");
    let enc_time = start.elapsed();
    // The digest is all the round trip needs: free the disk before writing a third copy.
    fs::remove_file(&plain).unwrap();
    let sealed_len = fs::metadata(&sealed).unwrap().len() as usize;
    let chunks = size.div_ceil(65536);
    assert!(
        sealed_len > size + 16 * chunks && sealed_len < size + 16 * chunks + 200,
        "envelope is {sealed_len} bytes for {size}"
    );
    let start = std::time::Instant::now();
    let (code, err, rss_dec) = hsmctl_rss(
        &d,
        &args!["envelope", "decrypt", "--in", sealed, "--out", opened]
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "envelope decrypt: {err}");
    let dec_time = start.elapsed();
    assert_eq!(sha256_file(&opened), digest, "round trip");
    println!(
        "envelope 200 MiB: encrypt {enc_time:?} peak RSS {rss_enc} KiB; decrypt {dec_time:?} peak RSS {rss_dec} KiB"
    );
    // Memory stays flat: a few chunk buffers plus the process itself, far below the
    // file size.
    for (what, rss) in [("encrypt", rss_enc), ("decrypt", rss_dec)] {
        assert!(rss < 64 * 1024, "{what} peak RSS {rss} KiB");
    }
}

#[tokio::test]
async fn envelope_refuses_truncated_swapped_and_altered_files() {
    let d = Daemon::start().await;
    if !d.offers(Need::Aes256).await {
        return;
    }
    let dir = d.scratch();
    create(&d, "AES_256", "files");
    let plain = dir.join("data.bin");
    write_pattern(&plain, 5 * 65536 + 1000);
    let sealed = dir.join("data.env");
    d.hsmctl_ok(args![
        "envelope",
        "encrypt",
        "alias/files",
        "--in",
        plain,
        "--out",
        sealed
    ]);
    let good = fs::read(&sealed).unwrap();
    let opened = dir.join("good.out");
    let text = d.hsmctl_ok(args![
        "envelope", "decrypt", "--in", sealed, "--out", opened
    ]);
    assert!(text.starts_with("decrypted 328680 bytes"), "{text}");
    assert_eq!(fs::read(&opened).unwrap(), fs::read(&plain).unwrap());

    let blob_len = u16::from_be_bytes([good[20], good[21]]) as usize;
    let start = 22 + blob_len;
    let sealed_chunk = 65536 + 16;
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    variants.push((
        "cut at a chunk boundary",
        good[..start + 3 * sealed_chunk].to_vec(),
    ));
    variants.push((
        "cut inside the last chunk",
        good[..good.len() - 10].to_vec(),
    ));
    variants.push(("header only", good[..start].to_vec()));
    let mut swapped = good.clone();
    let (a, b) = (start + sealed_chunk, start + 2 * sealed_chunk);
    let first = good[a..b].to_vec();
    swapped.copy_within(b..b + sealed_chunk, a);
    swapped[b..b + sealed_chunk].copy_from_slice(&first);
    variants.push(("chunks 1 and 2 swapped", swapped));
    let mut altered = good.clone();
    altered[start + 2 * sealed_chunk + 77] ^= 0x40;
    variants.push(("a ciphertext byte altered", altered));
    let mut dropped = good[..start + sealed_chunk].to_vec();
    dropped.extend_from_slice(&good[start + 2 * sealed_chunk..]);
    variants.push(("chunk 1 dropped", dropped));
    let mut header = good.clone();
    header[8..12].copy_from_slice(&32768u32.to_be_bytes());
    variants.push(("chunk size changed", header));
    for (what, bytes) in variants {
        let bad = write_file(&dir, "bad.env", &bytes);
        let out = dir.join("bad.out");
        let r = d.hsmctl(args!["envelope", "decrypt", "--in", bad, "--out", out]);
        assert_eq!(r.code, Some(2), "{what}: {}", r.describe());
        assert!(
            r.stderr.contains("ENVELOPE_INVALID"),
            "{what}: {}",
            r.describe()
        );
        assert!(!out.exists(), "{what}: plaintext left behind");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: temporary files left");
    }
}
