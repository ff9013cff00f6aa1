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

use std::{collections::HashSet, time::Duration};

use hsmd_e2e::{
    Daemon, args,
    load::{Fixture, rand_u64},
    v1::{MessageType, SignRequest, SigningAlgorithm},
};

const ROUNDS: usize = 5;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_kill_9s_under_mixed_load_lose_nothing() {
    let mut d = Daemon::start().await;
    let load = Fixture::make(&d, "alias/crash-moving").await;
    let pem = d.scratch().join("audit.pem");
    assert!(
        d.hsmctl(args!["audit", "public-key", "--out", &pem])
            .success()
    );
    let mut answered: HashSet<String> = HashSet::new();
    let mut created: Vec<String> = Vec::new();

    for round in 1..=ROUNDS {
        let running = load.start(&d, CLIENTS, 1);
        let delay = 800 + rand_u64() % 1700;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.kill_hard();
        let before = answered.len();
        created.extend(running.finish(&mut answered).await);
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
        let logged = d.audit_request_ids();
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
        for key in std::iter::once(&load.signer).chain(&created) {
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
