//! Slow and abusive clients, each test against a daemon of its own:
//! - 1,000 TCP connections that never start TLS (half-open handshakes), 200 TLS
//!   connections that stay idle, and a 64 MiB request;
//! - one principal opening more connections than `tls.max_connections_per_principal`;
//! - clients that send SignStream requests and never read the answers (HTTP/2 flow
//!   control must hold them, not hsmd's memory);
//! - one SignStream of 100,000 tiny Sign requests.
//!
//! Meanwhile other clients' calls keep succeeding; hsmd's memory grows by less than the
//! stated bound (README "Reliability": under 100 MiB); limits answer with clear statuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hsmd_e2e::{
    Daemon, Instance,
    algorithms::{create_key, openssl_verify, public_key_pem_file, sign},
    configured::with_admin_policy,
    expect_ok,
    status::{describe, key_method},
    v1::{
        KeySpec, MessageType, SignRequest, SigningAlgorithm, key_service_client::KeyServiceClient,
        sign_stream_response::Result as Answer,
    },
};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::Code;

const HALF_OPEN: usize = 1000;
const IDLE_TLS: usize = 200;
/// hsmd's growth for all of the above, in KiB.
const RSS_BOUND_KIB: u64 = 100 * 1024;

fn rss_kib(pid: u32) -> u64 {
    hsmd_e2e::tools::rss_kib(pid).expect("VmRSS of hsmd")
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
    let mut idle = Vec::with_capacity(IDLE_TLS);
    for i in 0..IDLE_TLS {
        let channel = d
            .connect_admin(|e| e)
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

/// Open sockets of process `pid`.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A KeyService client on a connection of its own as the dev admin.
async fn admin_connection(d: &Instance) -> KeyServiceClient<tonic::transport::Channel> {
    KeyServiceClient::new(d.connect_admin(|e| e).await.expect("admin connection"))
}

fn tiny_sign(key: &str, i: usize) -> SignRequest {
    SignRequest {
        key_id: key.to_string(),
        algorithm: SigningAlgorithm::EcdsaSha256 as i32,
        message_type: MessageType::Raw as i32,
        message: i.to_be_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_principal_limit_are_refused_and_closed() {
    const MAX: usize = 3;
    let (d, _config) = Daemon::start_configured(&with_admin_policy(&format!(
        "[tls]\nmax_connections_per_principal = {MAX}\nhandshake_timeout_secs = 2\n\n\
         [[policy.rules]]\nprincipals = [\"spiffe://test/other\"]\nactions = [\"*\"]\nkeys = [\"*\"]\n"
    )))
    .await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    // The harness's own channel is the admin's first connection.
    let mut mine = vec![d.keys()];
    for _ in 1..MAX {
        mine.push(admin_connection(&d).await);
    }
    for (i, k) in mine.iter_mut().enumerate() {
        expect_ok(
            sign(
                k,
                &key,
                SigningAlgorithm::EcdsaSha256,
                MessageType::Raw,
                b"within",
            )
            .await,
            &format!("admin connection {i} of {MAX}"),
        );
    }
    let other = d.issue_from_dev_ca("other", Some("spiffe://test/other"));
    let mut other = KeyServiceClient::new(
        d.connect_as(&other.cert_pem, &other.key_pem)
            .await
            .expect("connect as another principal"),
    );
    let sockets_within = sockets(d.pid());

    let mut past = admin_connection(&d).await;
    let r = sign(
        &mut past,
        &key,
        SigningAlgorithm::EcdsaSha256,
        MessageType::Raw,
        b"past",
    )
    .await;
    let record = d.assert_refused(
        r,
        &key_method("Sign"),
        tonic::Code::ResourceExhausted,
        "CONNECTION_LIMIT",
    );
    assert_eq!(record.str("principal"), hsmd_e2e::ADMIN_PRINCIPAL);
    assert_eq!(
        sockets(d.pid()),
        sockets_within + 1,
        "the connection past the limit is open"
    );
    // Another principal is not held back by the admin's connections.
    expect_ok(
        sign(
            &mut other,
            &key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"other",
        )
        .await,
        "another principal's Sign",
    );
    expect_ok(
        sign(
            &mut mine[1],
            &key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"still",
        )
        .await,
        "an admin connection within the limit",
    );
    // hsmd closes the connection past the limit (tls.handshake_timeout_secs later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while sockets(d.pid()) > sockets_within {
        assert!(
            Instant::now() < deadline,
            "the connection past the limit is still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(past);
    // A closed connection frees its place.
    drop(mine.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = admin_connection(&d).await;
        let r = sign(
            &mut again,
            &key,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Raw,
            b"again",
        )
        .await;
        match r {
            Ok(_) => break,
            Err(s) if Instant::now() < deadline => {
                eprintln!("---- not yet freed: {}", describe(&s));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!(
                "a closed connection did not free its place: {}",
                describe(&s)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_held_by_flow_control() {
    const STALLED: usize = 16;
    let d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    sign_ok(&d, &key, "before").await;
    let before = rss_kib(d.pid());
    let sent = Arc::new(AtomicUsize::new(0));
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        // Small receive windows, so a client that does not read is full after some
        // hundred answers (hyper's defaults, 2 MiB a stream, hold some 17,000).
        let channel = d
            .connect_admin(|e| {
                e.initial_stream_window_size(64 * 1024)
                    .initial_connection_window_size(64 * 1024)
            })
            .await
            .expect("admin connection");
        let mut k = KeyServiceClient::new(channel);
        let (key, sent) = (key.clone(), sent.clone());
        // Requests of 4 KiB as fast as the transport takes them; answers never read.
        let requests = tokio_stream::iter(0..).map(move |i| {
            sent.fetch_add(1, Ordering::Relaxed);
            let mut r = tiny_sign(&key, i);
            r.message = vec![0x42; 4096];
            r
        });
        let answers = k.sign_stream(requests).await.expect("SignStream starts");
        stalled.push((k, answers));
    }
    // Flow control stops the senders: the count levels off.
    let mut last = 0;
    let mut level = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            level += 1;
            if level == 3 {
                break;
            }
        } else {
            level = 0;
        }
        last = now;
    }
    assert_eq!(
        level, 3,
        "senders still sending after 15 s: {last} requests taken"
    );
    sign_ok(&d, &key, "while clients stall").await;
    let during = rss_kib(d.pid());
    eprintln!(
        "---- {STALLED} stalled SignStreams took {last} requests in all; hsmd RSS {before} KiB -> {during} KiB"
    );
    assert!(
        during.saturating_sub(before) < RSS_BOUND_KIB,
        "hsmd grew by {} KiB for stalled readers (bound {RSS_BOUND_KIB} KiB)",
        during - before
    );
    drop(stalled);
    sign_ok(&d, &key, "after the stalled clients left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_100k_tiny_signs_is_answered_whole_and_in_order() {
    const N: usize = 100_000;
    let d = Daemon::start().await;
    let key = create_key(&mut d.keys(), KeySpec::EcP256, "").await;
    let before = rss_kib(d.pid());
    let started = Instant::now();
    let mut answers = d
        .keys()
        .sign_stream(tokio_stream::iter((0..N).map({
            let key = key.clone();
            move |i| tiny_sign(&key, i)
        })))
        .await
        .expect("SignStream starts")
        .into_inner();
    let mut side = KeyServiceClient::new(d.channel());
    let mut n = 0usize;
    let mut peak = before;
    let mut kept = Vec::new();
    while let Some(a) = answers.message().await.expect("stream item") {
        assert_eq!(a.index as usize, n, "answers out of order");
        match a.result.expect("a result") {
            Answer::Signature(s) => {
                if n.is_multiple_of(25_000) || n == N - 1 {
                    kept.push((n, s.signature));
                }
            }
            Answer::Error(e) => panic!("request {n}: {} {}", e.reason, e.message),
        }
        if n.is_multiple_of(20_000) {
            peak = peak.max(rss_kib(d.pid()));
            // Other calls on the same connection go on meanwhile.
            expect_ok(
                sign(
                    &mut side,
                    &key,
                    SigningAlgorithm::EcdsaSha256,
                    MessageType::Raw,
                    b"side",
                )
                .await,
                "a Sign beside the stream",
            );
        }
        n += 1;
    }
    assert_eq!(n, N, "answers missing");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "---- {N} tiny Signs on one stream in {secs:.1} s; hsmd RSS {before} KiB, peak {peak} KiB"
    );
    assert!(
        peak.saturating_sub(before) < RSS_BOUND_KIB,
        "hsmd grew by {} KiB during the stream (bound {RSS_BOUND_KIB} KiB)",
        peak - before
    );
    // Every request has its record; sampled signatures verify with openssl.
    let signs = d
        .audit_lines()
        .iter()
        .filter(|l| l.str("method") == key_method("SignStream") && l.str("status") == "OK")
        .count();
    assert_eq!(signs, N, "audit records of the stream's Signs");
    let dir = d.scratch();
    let pem = public_key_pem_file(&mut d.keys(), &key, &dir, "stream.pub.pem").await;
    for (i, sig) in kept {
        let (msg, sig_path) = (dir.join(format!("m{i}")), dir.join(format!("s{i}")));
        std::fs::write(&msg, i.to_be_bytes()).expect("write message");
        std::fs::write(&sig_path, sig).expect("write signature");
        assert!(
            openssl_verify(SigningAlgorithm::EcdsaSha256, &pem, &msg, &sig_path),
            "openssl rejects the signature of request {i}"
        );
    }
}
