//! `--floor`, second part: the disk's own cost of one durable write, beside the transport's.
//!
//! Every answered call has an audit record on disk first (DESIGN: no answer before its
//! record is durable), and hsmd makes each group of records durable with one write and
//! one `fdatasync` of its write-ahead file. Part of that cost is the machine's, not
//! hsmd's: on a virtual disk each sync is a write request and a flush request, each a
//! notification to the hypervisor and an interrupt back, each a sleep and a wake-up of
//! the thread. This module measures that part on its own, the way the writer does it
//! (`audit/wal.rs`): a zero-filled file of fixed size in the daemon's data folder,
//! overwritten in place, one `pwrite` and one `fdatasync` per group, on a thread pinned
//! to hsmd's CPUs. Divided by the records hsmd made durable per sync in the same round
//! (from its `/metrics`), it is the disk's floor per call.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::pin;

/// Size of the file, as the writer's write-ahead file (`WAL_BYTES`).
const FILE_BYTES: u64 = 1 << 20;
/// Bytes per durable write: a group of six to eight records of about 500 bytes.
pub const WRITE_BYTES: usize = 4096;

/// CPU time and wall time of `syncs` durable writes (`pwrite` of `WRITE_BYTES` +
/// `fdatasync`) into a zero-filled file in `dir`, on a thread pinned to `cpus` when given.
pub fn measure(
    dir: &Path,
    cpus: Option<&[usize]>,
    syncs: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let path = dir.join("disk-floor.bin");
    let file = zero_filled(&path)?;
    let cpus = cpus.map(<[usize]>::to_vec);
    let took = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<(Duration, Duration)> {
            if let Some(cpus) = &cpus {
                pin::pin_current_thread(cpus).context("pin the disk floor's thread")?;
            }
            let block = [b'x'; WRITE_BYTES];
            let slots = FILE_BYTES / WRITE_BYTES as u64;
            let (start, wall) = (pin::thread_cpu(), std::time::Instant::now());
            for i in 0..syncs {
                file.write_all_at(&block, (i % slots) * WRITE_BYTES as u64)
                    .context("disk floor: write")?;
                file.sync_data().context("disk floor: fdatasync")?;
            }
            Ok((pin::thread_cpu() - start, wall.elapsed()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the disk floor's thread panicked"))?
    });
    let _ = std::fs::remove_file(&path);
    took
}

fn zero_filled(path: &Path) -> anyhow::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let zeros = vec![0u8; 1 << 16];
    for _ in 0..FILE_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// How many group writes (`fdatasync`s) the daemon's audit writer has made, and how many
/// records they made durable, from its Prometheus `/metrics` at `addr` (HOST:PORT).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AuditGroups {
    pub syncs: f64,
    pub records: f64,
}

impl AuditGroups {
    pub fn scrape(addr: &str) -> anyhow::Result<AuditGroups> {
        let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        stream.read_to_string(&mut body).context("read /metrics")?;
        if !body.starts_with("HTTP/1.") || !body.lines().next().is_some_and(|l| l.contains(" 200"))
        {
            bail!(
                "GET /metrics: {}",
                body.lines().next().unwrap_or("no answer")
            );
        }
        AuditGroups::parse(&body)
    }

    fn parse(text: &str) -> anyhow::Result<AuditGroups> {
        let value = |name: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("/metrics has no {name}"))?
                .trim()
                .parse()
                .with_context(|| format!("/metrics: {name} is not a number"))
        };
        Ok(AuditGroups {
            syncs: value("hsmd_audit_fsync_duration_seconds_count")?,
            records: value("hsmd_audit_records_written_total")?,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(self, before: AuditGroups) -> AuditGroups {
        AuditGroups {
            syncs: self.syncs - before.syncs,
            records: self.records - before.records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_the_exposition() {
        let text = "# HELP hsmd_audit_fsync_duration_seconds x\n\
                    hsmd_audit_fsync_duration_seconds_sum 1.5\n\
                    hsmd_audit_fsync_duration_seconds_count 120\n\
                    hsmd_audit_records_written_total 780\n";
        let g = AuditGroups::parse(text).unwrap();
        assert_eq!(
            g,
            AuditGroups {
                syncs: 120.0,
                records: 780.0
            }
        );
        let later = AuditGroups {
            syncs: 130.0,
            records: 850.0,
        };
        assert_eq!(
            later.since(g),
            AuditGroups {
                syncs: 10.0,
                records: 70.0
            }
        );
        assert!(AuditGroups::parse("hsmd_audit_records_written_total 1\n").is_err());
    }

    #[test]
    fn durable_writes_cost_some_cpu_and_take_longer_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cpu, wall) = measure(dir.path(), None, 20).unwrap();
        assert!(cpu > Duration::ZERO);
        assert!(wall >= cpu, "{wall:?} of wall time against {cpu:?} of CPU");
        assert!(!dir.path().join("disk-floor.bin").exists());
    }
}
