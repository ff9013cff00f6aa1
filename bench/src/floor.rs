//! `--floor`: the transport's own cost on the same daemon, connections and CPUs: gRPC
//! health checks (`grpc.health.v1.Health/Check`) over the same mTLS connections. TLS,
//! HTTP/2 and tonic are paid as by every call; no authorization, no token work, no audit
//! record. The daemon's CPU per health check is the floor under hsmd's overhead per
//! call; what hsmd costs above it is its own work.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use hsm_client::Client;
use hsm_client::bench::{Length, Samples};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// One measured slice of health checks, `concurrency` in flight over `clients`.
pub async fn measure(clients: &[Client], concurrency: usize, length: Length) -> Samples {
    let start = Instant::now();
    let deadline = match length {
        Length::Duration(d) => Some(start + d),
        Length::Calls(_) => None,
    };
    let remaining = Arc::new(AtomicI64::new(match length {
        Length::Calls(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Length::Duration(_) => i64::MAX,
    }));
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut health = HealthClient::new(clients[i % clients.len()].channel().clone());
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut errors) = (Vec::with_capacity(4096), 0u64);
            while deadline.is_none_or(|d| Instant::now() < d)
                && remaining.fetch_sub(1, Ordering::Relaxed) > 0
            {
                let t = Instant::now();
                let req = HealthCheckRequest {
                    service: String::new(),
                };
                match health.check(req).await {
                    Ok(_) => micros.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => errors += 1,
                }
            }
            (micros, errors)
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        if let Ok((m, e)) = t.await {
            samples.micros.extend(m);
            samples.errors += e;
        }
    }
    samples.elapsed = start.elapsed();
    samples
}
