//! `--kms`: the hsmd side of `--op encrypt` goes through the Kubernetes KMS v2 plugin on
//! its Unix socket (`v2.KeyManagementService/Encrypt` of a 32-byte DEK, as the API server
//! does for every Secret it writes) instead of KeyService Encrypt over mTLS. Same token
//! work (C_GenerateRandom for the IV, C_Encrypt with CKM_AES_GCM), so the raw side is
//! the same as for `--op encrypt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hsm_client::bench::{BENCH_MESSAGE, Length, Samples};
use hsmd_proto::kms_v2::EncryptRequest;
use hsmd_proto::kms_v2::key_management_service_client::KeyManagementServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A client of the plugin socket (one HTTP/2 connection, as the API server keeps).
pub async fn connect(socket: &Path) -> anyhow::Result<KeyManagementServiceClient<Channel>> {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::try_from("http://kms.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(KeyManagementServiceClient::new(channel))
}

/// One measured slice of `length` after `warmup`, `concurrency` calls in flight; the
/// first error's text beside the samples.
pub async fn measure(
    client: &KeyManagementServiceClient<Channel>,
    concurrency: usize,
    warmup: Duration,
    length: Length,
) -> (Samples, Option<String>) {
    if !warmup.is_zero() {
        drive(client, concurrency, Length::Duration(warmup)).await;
    }
    drive(client, concurrency, length).await
}

async fn drive(
    client: &KeyManagementServiceClient<Channel>,
    concurrency: usize,
    length: Length,
) -> (Samples, Option<String>) {
    let start = Instant::now();
    let deadline = match length {
        Length::Duration(d) => Some(start + d),
        Length::Calls(_) => None,
    };
    let remaining = Arc::new(AtomicI64::new(match length {
        Length::Calls(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Length::Duration(_) => i64::MAX,
    }));
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency.max(1) {
        let (mut client, remaining) = (client.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut errors, mut first_error) = (Vec::with_capacity(4096), 0, None);
            let mut n = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || remaining.fetch_sub(1, Ordering::Relaxed) <= 0
                {
                    break;
                }
                n += 1;
                let req = EncryptRequest {
                    plaintext: BENCH_MESSAGE.to_vec(),
                    uid: format!("bench-{i}-{n}"),
                };
                let t = Instant::now();
                match client.encrypt(req).await {
                    Ok(_) => micros.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (micros, errors, first_error)
        }));
    }
    let mut samples = Samples::default();
    let mut first_error = None;
    for t in tasks {
        if let Ok((micros, errors, f)) = t.await {
            samples.micros.extend(micros);
            samples.errors += errors;
            first_error = first_error.or(f);
        }
    }
    samples.elapsed = start.elapsed();
    (samples, first_error)
}
