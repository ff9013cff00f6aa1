//! Which key operations run on the async worker itself instead of the blocking pool.
//!
//! Token work runs in the blocking pool so that a slow call (an RSA key generation, a
//! key lookup behind a store write, a network HSM) never stalls the async workers. For
//! a short call that costs a thread hand-off each way, and on a busy core two hand-offs
//! cost more than an ECDSA signature in SoftHSM2. So each kind of work (the method and
//! the key as the caller named it) keeps a running average of how long it took, and work
//! whose average is under [`INLINE_BELOW`] runs on the worker: on SoftHSM2 an ECDSA
//! signature or an AES encryption does, an RSA signature (over a millisecond) does not,
//! nor does anything on a slow token. On one CPU the limit is [`INLINE_BELOW_ONE_CPU`],
//! and an RSA-2048 signature runs inline too. Work never seen goes to the pool first;
//! work that runs slow inline (a lock held by a writer, a token busy re-initializing)
//! raises its average and goes back to the pool on its next call.
//!
//! A sample is the CPU time the work used on its thread, not its wall time: on a
//! saturated core a thread waits its turn for the CPU, and that wait says nothing about
//! how long the work would hold a worker. What does hold a worker is a stall, the thread
//! going to sleep on a lock or a busy token: an inline run that slept (a voluntary
//! context switch, from `getrusage(RUSAGE_THREAD)`) and took longer than [`STALL`]
//! counts with its wall time.
//!
//! The CPU clocks are system calls (four per inline run, about 5 us on this VM), so
//! inline work that is well inside the limit (under a quarter of it on average) is
//! timed on one run in [`SAMPLE_EVERY`]; the other runs only read the wall clock (vDSO,
//! no system call), and one that took longer than [`STALL`] counts with its wall time,
//! as a stall would: a wait for the CPU may then send quick work to the pool once, from
//! where its next samples bring it back.
//!
//! The averages sit in a fixed table indexed by a hash, so callers naming many keys
//! cost no memory; two kinds of work sharing a slot share one average, which at worst
//! runs one slow call inline before the average sends it back to the pool.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Work that took less than this on average runs on the async worker.
pub(crate) const INLINE_BELOW: Duration = Duration::from_micros(500);
/// The same limit when the daemon has one CPU (its affinity, or a cgroup quota of one
/// CPU or less). A hand-off to the blocking pool buys no parallelism there: the pool's
/// thread runs on the worker's CPU. It only adds two thread switches per call, and the
/// worker and the audit writer, waking, preempt the work about once per call. So work
/// up to this runs inline (an RSA-2048 signature or OAEP decryption in SoftHSM2, about
/// 1.1 ms; not RSA-3072 or larger, nor a key generation).
pub(crate) const INLINE_BELOW_ONE_CPU: Duration = Duration::from_millis(2);
/// An inline run that slept and took longer than this stalled the worker: it counts
/// as its wall time, whatever CPU it used.
pub(crate) const STALL: Duration = Duration::from_millis(1);
/// Slots of the table of averages.
const SLOTS: usize = 1024;
/// Quick inline work is timed with the CPU clocks on one run in this many.
const SAMPLE_EVERY: u32 = 8;

/// Running averages of how long each kind of key work took, in microseconds (0: never
/// seen).
pub(crate) struct Pace {
    slots: Box<[AtomicU32]>,
    /// Counts quick inline runs, to time one in [`SAMPLE_EVERY`].
    runs: AtomicU32,
    /// Work whose average (us) is under this runs inline.
    limit_us: u32,
}

/// One kind of work: a slot of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind(usize);

impl Default for Pace {
    /// For the CPUs this process may use (`available_parallelism`: its affinity and its
    /// cgroup's CPU quota).
    fn default() -> Self {
        Pace::for_cpus(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Pace {
    /// For a process with `cpus` CPUs: [`INLINE_BELOW_ONE_CPU`] with one, else
    /// [`INLINE_BELOW`].
    pub(crate) fn for_cpus(cpus: usize) -> Self {
        let limit = if cpus <= 1 {
            INLINE_BELOW_ONE_CPU
        } else {
            INLINE_BELOW
        };
        Pace {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            runs: AtomicU32::new(0),
            limit_us: limit.as_micros() as u32,
        }
    }

    /// The kind of work of `method` on the key named `named`.
    pub(crate) fn kind(&self, method: &str, named: &str) -> Kind {
        let mut h = std::hash::DefaultHasher::new();
        method.hash(&mut h);
        named.hash(&mut h);
        Kind((h.finish() % SLOTS as u64) as usize)
    }

    /// True if work of this kind has been quick on average.
    pub(crate) fn inline(&self, kind: Kind) -> bool {
        let us = self.slots[kind.0].load(Ordering::Relaxed);
        us != 0 && us < self.limit_us
    }

    /// Runs `work` of this kind and adds what it cost to the kind's average (see the
    /// module comment). `inline`: the run holds an async worker.
    pub(crate) fn measure<T>(&self, kind: Kind, inline: bool, work: impl FnOnce() -> T) -> T {
        if !self.timed(kind, inline) {
            let began = std::time::Instant::now();
            let done = work();
            let wall = began.elapsed();
            if wall > STALL {
                self.took(kind, wall);
            }
            return done;
        }
        let slept = || inline.then(voluntary_switches);
        let (began, cpu, before) = (std::time::Instant::now(), thread_cpu(), slept());
        let done = work();
        let (wall, cpu) = (began.elapsed(), thread_cpu().saturating_sub(cpu));
        let stalled = wall > STALL && slept() > before;
        self.took(kind, if stalled { wall } else { cpu });
        done
    }

    /// Whether this run is timed with the CPU clocks: every run in the pool or of work
    /// not yet known to be quick, one quick inline run in [`SAMPLE_EVERY`].
    fn timed(&self, kind: Kind, inline: bool) -> bool {
        let us = self.slots[kind.0].load(Ordering::Relaxed);
        !inline
            || us == 0
            || us >= self.limit_us / 4
            || self
                .runs
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SAMPLE_EVERY)
    }

    /// Adds how long one piece of work of this kind took to its average (a quarter of
    /// the new sample, three quarters of the old average).
    pub(crate) fn took(&self, kind: Kind, took: Duration) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        let slot = &self.slots[kind.0];
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            ((u64::from(old) * 3 + u64::from(sample)) / 4).max(1) as u32
        };
        // A lost update between two racing calls only drops one sample.
        slot.store(new, Ordering::Relaxed);
    }
}

/// CPU time the calling thread has used (precise: `getrusage` counts a thread's CPU
/// in scheduler ticks).
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Times the calling thread went to sleep (voluntary context switches).
fn voluntary_switches() -> i64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |u| u.voluntary_context_switches())
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn with_one_cpu_an_rsa_signature_runs_inline_and_a_key_generation_does_not() {
        let pace = Pace::for_cpus(1);
        let sign = pace.kind("Sign", "alias/rsa");
        let create = pace.kind("CreateKey", "RSA_2048");
        pace.took(sign, US(1100));
        pace.took(create, US(80_000));
        assert!(pace.inline(sign));
        assert!(!pace.inline(create));
        // With two CPUs the signature goes to the pool.
        let two = Pace::for_cpus(2);
        two.took(sign, US(1100));
        assert!(!two.inline(sign));
    }

    #[test]
    fn work_never_seen_goes_to_the_pool() {
        let pace = Pace::for_cpus(2);
        assert!(!pace.inline(pace.kind("Sign", "alias/app")));
    }

    #[test]
    fn quick_work_runs_inline_and_slow_work_does_not() {
        let pace = Pace::for_cpus(2);
        let quick = pace.kind("Sign", "alias/ec");
        let slow = pace.kind("Sign", "alias/rsa");
        assert_ne!(quick.0, slow.0, "test keys share a slot; pick other names");
        pace.took(quick, US(60));
        pace.took(slow, US(1_300));
        assert!(pace.inline(quick));
        assert!(!pace.inline(slow));
        assert!(!pace.inline(pace.kind("Encrypt", "alias/ec")));
    }

    #[test]
    fn one_stall_inline_sends_the_work_back_to_the_pool() {
        let pace = Pace::for_cpus(2);
        let kind = pace.kind("Sign", "alias/ec");
        for _ in 0..20 {
            pace.took(kind, US(60));
        }
        assert!(pace.inline(kind));
        pace.took(kind, US(2_000));
        assert!(
            !pace.inline(kind),
            "a 2 ms stall must move the work off the worker"
        );
        // Back in the pool it is quick again, and returns to the worker.
        for _ in 0..6 {
            pace.took(kind, US(60));
        }
        assert!(pace.inline(kind));
    }

    #[test]
    fn a_stall_inline_counts_its_wall_time_and_a_wait_in_the_pool_does_not() {
        let pace = Pace::for_cpus(2);
        let kind = pace.kind("Sign", "alias/ec");
        pace.took(kind, US(60));
        // Sleeping uses no CPU: in the pool that is a wait for the CPU or a lock, and
        // says nothing about the work.
        pace.measure(kind, false, || std::thread::sleep(STALL * 2));
        assert!(pace.inline(kind));
        // On a worker it held the worker: back to the pool.
        pace.measure(kind, true, || std::thread::sleep(STALL * 2));
        assert!(!pace.inline(kind));
    }

    #[test]
    fn averages_saturate_instead_of_wrapping() {
        let pace = Pace::for_cpus(2);
        let kind = pace.kind("GenerateDataKey", "k");
        pace.took(kind, Duration::from_secs(100_000));
        pace.took(kind, Duration::from_secs(100_000));
        assert!(!pace.inline(kind));
        pace.took(kind, Duration::ZERO);
        assert!(!pace.inline(kind));
    }

    #[test]
    fn quick_inline_work_is_timed_one_run_in_eight_and_the_rest_always() {
        let pace = Pace::for_cpus(2);
        let quick = pace.kind("Sign", "alias/ec");
        let near = pace.kind("Sign", "alias/rsa");
        assert_ne!(quick.0, near.0, "test keys share a slot; pick other names");
        pace.took(quick, US(60));
        pace.took(near, US(300));
        let timed = (0..64).filter(|_| pace.timed(quick, true)).count();
        assert_eq!(timed, 64 / SAMPLE_EVERY as usize);
        assert!((0..16).all(|_| pace.timed(quick, false)), "pool runs");
        assert!((0..16).all(|_| pace.timed(near, true)), "near the limit");
        let unseen = pace.kind("Encrypt", "alias/new");
        assert!(pace.timed(unseen, true), "never seen");
    }

    #[test]
    fn an_untimed_inline_run_that_stalls_still_counts() {
        let pace = Pace::for_cpus(2);
        let kind = pace.kind("Sign", "alias/ec");
        for _ in 0..20 {
            pace.took(kind, US(60));
        }
        // Whichever run the sampler is at, a 2 ms run on the worker counts.
        for _ in 0..SAMPLE_EVERY {
            if !pace.inline(kind) {
                break;
            }
            pace.measure(kind, true, || std::thread::sleep(STALL * 2));
        }
        assert!(
            !pace.inline(kind),
            "a stall must move the work off the worker"
        );
    }
}
