//! `hsmctl bench`: drive a running daemon and print throughput and latency. The raw
//! PKCS#11 comparison lives in `hsmd-bench`, which uses the same load generator.

use std::time::Duration;

use clap::Args;
use hsm_client::Client;
use hsm_client::bench::{self, BenchOp, BenchSpec, Length};
use hsm_client::v1::SigningAlgorithm;

use super::args::{parse_duration, println};
use super::{CliEnv, CliError, Verdict};

/// Load-test one operation on one key.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Operation to drive.
    #[arg(long, value_enum, default_value = "sign")]
    op: BenchOp,
    /// Key to use (UUID or alias/NAME).
    #[arg(long, value_name = "K")]
    key: String,
    /// Signing algorithm for sign/verify (proto name, e.g. RSA_PKCS1_SHA_256).
    #[arg(long, default_value = "RSA_PKCS1_SHA_256")]
    algorithm: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured duration (e.g. 10s, 1m); ignored with --calls.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Measure this many calls instead of a duration.
    #[arg(long)]
    calls: Option<u64>,
    /// Unmeasured warm-up before the run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Sign over the SignStream RPC (one stream per connection) instead of unary calls.
    #[arg(long)]
    stream: bool,
}

impl BenchArgs {
    pub async fn run(
        self,
        env: &CliEnv,
        profile: &hsm_client::Profile,
    ) -> Result<Verdict, CliError> {
        let algorithm: SigningAlgorithm = hsm_client::names::parse(&self.algorithm)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let mut clients = vec![env.client.clone()];
        for _ in 1..self.connections.max(1) {
            clients.push(Client::connect(profile).await?);
        }
        let spec = BenchSpec {
            op: self.op,
            key_id: self.key,
            algorithm,
            concurrency: self.concurrency.max(1),
            length: self
                .calls
                .map(Length::Calls)
                .unwrap_or(Length::Duration(self.duration)),
            warmup: self.warmup,
            stream: self.stream,
        };
        if spec.stream && spec.op != BenchOp::Sign {
            return Err(CliError::usage("--stream works with --op sign only"));
        }
        let (stats, first_error) = bench::run(&clients, &spec).await?;
        if env.json() {
            let v = serde_json::json!({
                "op": spec.op, "key_id": spec.key_id, "algorithm": algorithm.as_str_name(),
                "concurrency": spec.concurrency, "connections": clients.len(), "stream": spec.stream,
                "hsmd": stats, "first_error": first_error,
            });
            println(v)?;
        } else {
            super::args::print(&bench::table(&[("hsmd", &stats)]))?;
            if let Some(e) = first_error {
                eprintln!("first error: {e}");
            }
        }
        Ok(if stats.errors == 0 {
            Verdict::Yes
        } else {
            Verdict::No
        })
    }
}
