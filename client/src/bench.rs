//! Load generation against hsmd, shared by `hsmctl bench` and `hsmd-bench`.
//!
//! `concurrency` tasks each keep one call in flight over one or several HTTP/2
//! connections, for a duration or a call count, after a warm-up. Latencies are kept per
//! call (microseconds) and summarised as percentiles; [`LatencyStats`] is also used for
//! the raw PKCS#11 baseline so both sides are summarised the same way.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Client;
use crate::error::ClientError;
use crate::v1::{
    DecryptRequest, EncryptRequest, EncryptionAlgorithm, GenerateDataKeyRequest,
    GetPublicKeyRequest, KeySpec, MessageType, SignRequest, SigningAlgorithm, VerifyRequest,
};

/// Operations the load generator can drive. With the `cli` feature (the default) it is
/// also a `clap::ValueEnum`, for `hsmctl bench --op` and `hsmd-bench --op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum BenchOp {
    /// Sign a 32-byte RAW message.
    Sign,
    /// Verify a signature made once before the run.
    Verify,
    /// GetPublicKey (no token work: store and gRPC overhead only).
    GetPublicKey,
    /// Decrypt a 32-byte message encrypted once before the run with RSAES_OAEP_SHA_1
    /// (an RSA ENCRYPT_DECRYPT key; OAEP-SHA-1 is the token's own OAEP).
    Decrypt,
    /// Encrypt the 32-byte message (an AES_256 key: AES-GCM in the token).
    Encrypt,
    /// GenerateDataKey AES_256 under an AES_256 key.
    GenerateDataKey,
}

impl BenchOp {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Sign => "sign",
            BenchOp::Verify => "verify",
            BenchOp::GetPublicKey => "get-public-key",
            BenchOp::Decrypt => "decrypt",
            BenchOp::Encrypt => "encrypt",
            BenchOp::GenerateDataKey => "generate-data-key",
        }
    }

    /// True for the operations that need an ENCRYPT_DECRYPT key.
    pub fn encrypts(self) -> bool {
        matches!(
            self,
            BenchOp::Decrypt | BenchOp::Encrypt | BenchOp::GenerateDataKey
        )
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Wall-clock duration of the measured part.
    Duration(Duration),
    /// Total calls in the measured part.
    Calls(u64),
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Operation to drive.
    pub op: BenchOp,
    /// Key id or alias.
    pub key_id: String,
    /// Signing algorithm (sign and verify).
    pub algorithm: SigningAlgorithm,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// How long the measured part lasts.
    pub length: Length,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Sign over SignStream (one stream per connection, `concurrency` requests in
    /// flight in all) instead of unary calls.
    pub stream: bool,
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencyStats {
    /// Successful calls measured.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Measured wall-clock seconds.
    pub seconds: f64,
    /// Successful calls per second.
    pub ops_per_sec: f64,
    /// Latency percentiles and maximum, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest call, ms.
    pub max_ms: f64,
}

impl LatencyStats {
    /// Summarises successful-call latencies (microseconds), error count and elapsed time.
    pub fn from_micros(mut micros: Vec<u32>, errors: u64, elapsed: Duration) -> Self {
        micros.sort_unstable();
        let pct = |p: f64| -> f64 {
            if micros.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * micros.len() as f64).ceil() as usize;
            micros[rank.clamp(1, micros.len()) - 1] as f64 / 1000.0
        };
        let seconds = elapsed.as_secs_f64();
        LatencyStats {
            calls: micros.len() as u64,
            errors,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                micros.len() as f64 / seconds
            } else {
                0.0
            },
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            max_ms: micros.last().map(|m| *m as f64 / 1000.0).unwrap_or(0.0),
        }
    }
}

/// The message every benchmark call signs (RAW, 32 bytes).
pub const BENCH_MESSAGE: &[u8; 32] = b"hsmd benchmark message 32 bytes!";

/// Successful-call latencies (microseconds), failures and measured time of one or more
/// measured slices, pooled.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Latency of each successful call, microseconds.
    pub micros: Vec<u32>,
    /// Failed calls.
    pub errors: u64,
    /// Measured wall-clock time.
    pub elapsed: Duration,
}

impl Samples {
    /// Adds another slice's samples.
    pub fn add(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    /// Calls per second and percentiles over everything added.
    pub fn stats(&self) -> LatencyStats {
        LatencyStats::from_micros(self.micros.clone(), self.errors, self.elapsed)
    }
}

/// What the calls of a run need that is made once before it: for Verify a signature,
/// for Decrypt a ciphertext.
#[derive(Debug, Clone, Default)]
pub struct Prepared(Vec<u8>);

/// Makes the signature (Verify) or ciphertext (Decrypt) the calls use.
pub async fn prepare(clients: &[Client], spec: &BenchSpec) -> Result<Prepared, ClientError> {
    let first = clients
        .first()
        .ok_or(ClientError::MissingField("at least one connection"))?;
    Ok(Prepared(match spec.op {
        BenchOp::Verify => {
            first
                .sign(
                    &spec.key_id,
                    spec.algorithm,
                    MessageType::Raw,
                    BENCH_MESSAGE.to_vec(),
                )
                .await?
        }
        BenchOp::Decrypt => {
            first
                .encrypt(
                    &spec.key_id,
                    Some(EncryptionAlgorithm::RsaesOaepSha1),
                    BENCH_MESSAGE,
                    b"",
                )
                .await?
                .ciphertext
        }
        _ => Vec::new(),
    }))
}

/// One measured slice of `length` after `warmup` (unmeasured); the first error's text
/// is returned beside the samples so a failing run is explained.
pub async fn measure(
    clients: &[Client],
    spec: &BenchSpec,
    prepared: &Prepared,
    warmup: Duration,
    length: Length,
) -> (Samples, Option<String>) {
    if !warmup.is_zero() {
        drive(clients, spec, &prepared.0, Length::Duration(warmup)).await;
    }
    let (micros, errors, first_error, elapsed) = drive(clients, spec, &prepared.0, length).await;
    (
        Samples {
            micros,
            errors,
            elapsed,
        },
        first_error,
    )
}

/// Runs the load over `clients` (one connection each; tasks are spread over them):
/// `spec.warmup`, then `spec.length` measured.
pub async fn run(
    clients: &[Client],
    spec: &BenchSpec,
) -> Result<(LatencyStats, Option<String>), ClientError> {
    let prepared = prepare(clients, spec).await?;
    let (samples, first_error) = measure(clients, spec, &prepared, spec.warmup, spec.length).await;
    Ok((samples.stats(), first_error))
}

async fn drive(
    clients: &[Client],
    spec: &BenchSpec,
    signature: &[u8],
    length: Length,
) -> (Vec<u32>, u64, Option<String>, Duration) {
    if spec.stream {
        return stream::drive(clients, spec, length).await;
    }
    let start = Instant::now();
    let deadline = match length {
        Length::Duration(d) => Some(start + d),
        Length::Calls(_) => None,
    };
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(match length {
        Length::Calls(n) => n as i64,
        Length::Duration(_) => i64::MAX,
    }));
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for i in 0..spec.concurrency.max(1) {
        let client = clients[i % clients.len()].clone();
        let (spec, signature, remaining) = (spec.clone(), signature.to_vec(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut micros = Vec::with_capacity(4096);
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0
                {
                    break;
                }
                let t = Instant::now();
                match one_call(&client, &spec, &signature).await {
                    Ok(()) => micros.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (micros, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        if let Ok((m, e, f)) = t.await {
            all.extend(m);
            errors += e;
            first_error = first_error.or(f);
        }
    }
    (all, errors, first_error, start.elapsed())
}

async fn one_call(client: &Client, spec: &BenchSpec, signature: &[u8]) -> Result<(), ClientError> {
    let mut keys = client.keys();
    match spec.op {
        BenchOp::Sign => {
            let req = SignRequest {
                key_id: spec.key_id.clone(),
                algorithm: spec.algorithm as i32,
                message_type: MessageType::Raw as i32,
                message: BENCH_MESSAGE.to_vec(),
            };
            keys.sign(req).await?;
        }
        BenchOp::Verify => {
            let req = VerifyRequest {
                key_id: spec.key_id.clone(),
                algorithm: spec.algorithm as i32,
                message_type: MessageType::Raw as i32,
                message: BENCH_MESSAGE.to_vec(),
                signature: signature.to_vec(),
            };
            if !keys.verify(req).await?.into_inner().valid {
                return Err(ClientError::MissingField("valid signature"));
            }
        }
        BenchOp::GetPublicKey => {
            keys.get_public_key(GetPublicKeyRequest {
                key_id: spec.key_id.clone(),
            })
            .await?;
        }
        BenchOp::Decrypt => {
            let req = DecryptRequest {
                key_id: spec.key_id.clone(),
                ciphertext: signature.to_vec(),
                encryption_algorithm: EncryptionAlgorithm::RsaesOaepSha1 as i32,
                aad: Vec::new(),
            };
            if keys.decrypt(req).await?.get_ref().plaintext != BENCH_MESSAGE {
                return Err(ClientError::MissingField("the benchmark message back"));
            }
        }
        BenchOp::Encrypt => {
            let req = EncryptRequest {
                key_id: spec.key_id.clone(),
                plaintext: BENCH_MESSAGE.to_vec(),
                encryption_algorithm: 0,
                aad: Vec::new(),
            };
            keys.encrypt(req).await?;
        }
        BenchOp::GenerateDataKey => {
            let req = GenerateDataKeyRequest {
                key_id: spec.key_id.clone(),
                key_spec: KeySpec::Aes256 as i32,
                aad: Vec::new(),
            };
            keys.generate_data_key(req).await?;
        }
    }
    Ok(())
}

/// A plain table of runs: one row per (name, stats).
pub fn table(rows: &[(&str, &LatencyStats)]) -> String {
    let mut out = format!(
        "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "calls", "errors"
    );
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<8} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7}\n",
            name, s.ops_per_sec, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.calls, s.errors
        ));
    }
    out
}

/// Sign over SignStream: per stream, a sender keeps up to `window` requests in flight
/// and a receiver takes the in-order answers, timing each from its send.
mod stream {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::sync::Semaphore;

    use super::{BENCH_MESSAGE, BenchSpec, Length};
    use crate::client::Client;
    use crate::v1::{MessageType, SignRequest, sign_stream_response};

    pub async fn drive(
        clients: &[Client],
        spec: &BenchSpec,
        length: Length,
    ) -> (Vec<u32>, u64, Option<String>, std::time::Duration) {
        let start = Instant::now();
        let window = spec.concurrency.div_ceil(clients.len()).max(1);
        let per_stream = match length {
            Length::Calls(n) => Some(n.div_ceil(clients.len() as u64)),
            Length::Duration(_) => None,
        };
        let deadline = match length {
            Length::Duration(d) => Some(start + d),
            Length::Calls(_) => None,
        };
        let mut tasks = Vec::new();
        for client in clients {
            let (client, spec) = (client.clone(), spec.clone());
            tasks.push(tokio::spawn(async move {
                one_stream(client, spec, window, per_stream, deadline).await
            }));
        }
        let (mut all, mut errors, mut first_error) = (Vec::new(), 0, None);
        for t in tasks {
            match t.await {
                Ok((m, e, f)) => {
                    all.extend(m);
                    errors += e;
                    first_error = first_error.or(f);
                }
                Err(e) => first_error = first_error.or(Some(e.to_string())),
            }
        }
        (all, errors, first_error, start.elapsed())
    }

    async fn one_stream(
        client: Client,
        spec: BenchSpec,
        window: usize,
        calls: Option<u64>,
        deadline: Option<Instant>,
    ) -> (Vec<u32>, u64, Option<String>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<SignRequest>(window);
        let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        let permits = Arc::new(Semaphore::new(window));
        let (sent2, permits2) = (sent.clone(), permits.clone());
        let request = SignRequest {
            key_id: spec.key_id.clone(),
            algorithm: spec.algorithm as i32,
            message_type: MessageType::Raw as i32,
            message: BENCH_MESSAGE.to_vec(),
        };
        let sender = tokio::spawn(async move {
            let mut n = 0u64;
            while calls.is_none_or(|c| n < c) && deadline.is_none_or(|d| Instant::now() < d) {
                let Ok(p) = permits2.acquire().await else {
                    break;
                };
                p.forget();
                sent2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(Instant::now());
                if tx.send(request.clone()).await.is_err() {
                    break;
                }
                n += 1;
            }
        });
        let mut answers = match client
            .keys()
            .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return (Vec::new(), 1, Some(e.to_string())),
        };
        let (mut micros, mut errors, mut first_error) = (Vec::new(), 0, None);
        loop {
            match answers.message().await {
                Ok(Some(a)) => {
                    let t = sent.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    permits.add_permits(1);
                    match a.result {
                        Some(sign_stream_response::Result::Signature(_)) => {
                            micros.push(
                                t.map(|t| t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                                    .unwrap_or(0),
                            );
                        }
                        other => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{other:?}"));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                    break;
                }
            }
        }
        let _ = sender.await;
        (micros, errors, first_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = LatencyStats::from_micros(
            (1..=100).map(|i| i * 1000).collect(),
            2,
            Duration::from_secs(2),
        );
        assert_eq!(s.calls, 100);
        assert_eq!(s.errors, 2);
        assert_eq!(s.ops_per_sec, 50.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(
            LatencyStats::from_micros(vec![], 0, Duration::ZERO).p99_ms,
            0.0
        );
    }
}
