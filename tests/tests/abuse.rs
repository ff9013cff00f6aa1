//! Slow and abusive clients against one daemon: 1,000 TCP connections that never start
//! TLS (half-open handshakes), 200 TLS connections that stay idle, and a 64 MiB
//! request. Meanwhile another client's calls keep succeeding; hsmd's memory grows by
//! less than the stated bound (README "Reliability": under 100 MiB for all of them); the
//! half-open connections are closed at `tls.handshake_timeout_secs`; the huge request
//! is refused with a status naming the size limit, and hsmd serves on.

use std::time::{Duration, Instant};

use hsmd_e2e::{
    Daemon,
    algorithms::{create_key, sign},
    configured::with_admin_policy,
    expect_ok,
    status::describe,
    v1::{KeySpec, MessageType, SigningAlgorithm},
};
use tokio::io::AsyncReadExt;
use tonic::Code;

const HALF_OPEN: usize = 1000;
const IDLE_TLS: usize = 200;
/// hsmd's growth for all of the above, in KiB.
const RSS_BOUND_KIB: u64 = 100 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// This test holds over a thousand sockets: use the whole hard limit of open files.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct for this process.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn sign_ok(d: &Daemon, key: &str, what: &str) {
    expect_ok(
        sign(
            &mut d.keys(),
            key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            what.as_bytes(),
        )
        .await,
        what,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_and_huge_requests_do_not_hurt_other_clients() {
    raise_nofile();
    let (d, _config) =
        Daemon::start_configured(&with_admin_policy("[tls]\nhandshake_timeout_secs = 2\n")).await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    sign_ok(&d, &key, "before").await;
    let before = rss_kib(d.pid());
    let addr = d
        .profile()
        .endpoint
        .trim_start_matches("https://")
        .to_string();

    let mut half_open = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        half_open.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("TCP connect"),
        );
    }
    let admin = (
        std::fs::read(&d.profile().client_cert).expect("client cert"),
        std::fs::read(&d.profile().client_key).expect("client key"),
    );
    let mut idle = Vec::with_capacity(IDLE_TLS);
    for i in 0..IDLE_TLS {
        let channel = d
            .connect_as(&admin.0, &admin.1)
            .await
            .unwrap_or_else(|e| panic!("idle TLS connection {i}: {e:?}"));
        idle.push(channel);
    }
    sign_ok(&d, &key, "with everything connected").await;
    let during = rss_kib(d.pid());
    eprintln!(
        "---- hsmd RSS {before} KiB -> {during} KiB with {HALF_OPEN} half-open and {IDLE_TLS} idle TLS connections"
    );
    assert!(
        during.saturating_sub(before) < RSS_BOUND_KIB,
        "hsmd grew by {} KiB (bound {RSS_BOUND_KIB} KiB)",
        during - before
    );

    // The server closes connections that never finish their handshake.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16];
    for (i, s) in half_open.iter_mut().enumerate().step_by(50) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("half-open connection {i}: the server sent {n} bytes"),
            Err(_) => panic!("half-open connection {i} still open after the handshake timeout"),
        }
    }

    // A 64 MiB message: refused by size, before any work; the daemon serves on.
    let huge = vec![0x5a; 64 << 20];
    let r = sign(
        &mut d.keys(),
        &key,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        &huge,
    )
    .await;
    let status = r.expect_err("a 64 MiB Sign was accepted");
    eprintln!("---- 64 MiB Sign: {}", describe(&status));
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "64 MiB request: {}",
        describe(&status)
    );
    assert!(
        status.message().contains("message length too large") || status.message().contains("size"),
        "the refusal does not name the size limit: {}",
        describe(&status)
    );
    sign_ok(&d, &key, "after the huge request").await;
    drop(idle);
    let after = rss_kib(d.pid());
    eprintln!("---- hsmd RSS {after} KiB after the huge request");
    assert!(
        after.saturating_sub(before) < RSS_BOUND_KIB,
        "hsmd kept {} KiB after the huge request",
        after - before
    );
}
