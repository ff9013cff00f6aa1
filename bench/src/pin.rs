//! `--pin`: the load generator on its own CPU (the last one this process may use), the
//! token work of both sides (the raw threads and the hsmd child) on the others, so the
//! client's cost leaves the comparison; and the CPU time each side spends per call,
//! read from the kernel (`/proc/<pid>/stat` for the daemon, the raw threads' own
//! CLOCK_THREAD_CPUTIME_ID).

use std::time::Duration;

use anyhow::{Context, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// Which CPUs do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The load generator (this process's main thread and async runtime).
    pub client: Vec<usize>,
    /// The raw baseline's threads and the hsmd child.
    pub work: Vec<usize>,
}

impl Plan {
    /// Splits the CPUs this process may run on: the last for the client, the rest for
    /// the work. Needs at least two.
    pub fn split(allowed: &[usize]) -> anyhow::Result<Plan> {
        match allowed {
            [] | [_] => bail!(
                "--pin needs at least 2 CPUs (this process may use {allowed:?}); run with --pin=false"
            ),
            [work @ .., last] => Ok(Plan {
                client: vec![*last],
                work: work.to_vec(),
            }),
        }
    }

    /// The plan for this process's affinity.
    pub fn current() -> anyhow::Result<Plan> {
        Plan::split(&allowed_cpus()?)
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Restricts the calling thread (pid 0: this thread only; threads it starts later
/// inherit it) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// CPU time (user + system, all threads) process `pid` has used, from `/proc/<pid>/stat`
/// (clock ticks, 10 ms on this kernel: fine over runs of thousands of calls).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&stat, ticks_per_sec())
}

fn ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str, ticks: u64) -> anyhow::Result<Duration> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("/proc stat line without ')'")?;
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc stat line")?
            .parse()
            .context("/proc stat field")
    };
    let ticks_used = field(14)? + field(15)?;
    Ok(Duration::from_micros(ticks_used * 1_000_000 / ticks))
}

/// Microseconds of CPU per call (0 without calls).
pub fn us_per_call(cpu: Duration, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / calls as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_cpu_drives_the_others_work() {
        let p = Plan::split(&[0, 1]).unwrap();
        assert_eq!((p.client, p.work), (vec![1], vec![0]));
        let p = Plan::split(&[2, 5, 7]).unwrap();
        assert_eq!((p.client, p.work), (vec![7], vec![2, 5]));
        assert!(Plan::split(&[3]).is_err());
    }

    #[test]
    fn stat_cpu_counts_after_the_name() {
        let line = "42 (hsmd (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 1 1";
        assert_eq!(parse_stat_cpu(line, 100).unwrap(), Duration::from_secs(3));
        let me = process_cpu(std::process::id()).unwrap();
        assert!(me < Duration::from_secs(3600));
        assert!(!allowed_cpus().unwrap().is_empty());
        let t0 = thread_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1 && thread_cpu() > t0);
    }
}
