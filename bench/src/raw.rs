//! The raw baseline: the same operation done in-process with cryptoki directly on the
//! same token, with the same key template, the same session-object copy of the private
//! key and the same input preparation as hsmd, one session per thread, the key's handles
//! found once. This is the best a caller linked
//! against the PKCS#11 module could do; hsmd's figure is compared with it.
//!
//! The encryption operations do the token calls hsmd does: decrypt is C_Decrypt with
//! CKM_RSA_PKCS_OAEP (SHA-1); encrypt is C_GenerateRandom for the IV, then C_Encrypt with
//! CKM_AES_GCM; generate-data-key is C_GenerateRandom for the key and the IV, then
//! C_Encrypt with CKM_AES_GCM.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use hsm_client::bench::{BENCH_MESSAGE, BenchOp, Length, Samples};
use hsmd::baseline::{
    self as objects, KeyObjects, OaepHash, aes_gcm, ecdsa_hashes, oaep, sign_mechanism as mechanism,
};
use hsmd::config::Config;
use hsmd::domain::spec::{HashAlg, KeySpec, KeyUsage, MessageType, SigningAlgorithm};

/// One raw run's parameters.
pub struct RawSpec {
    pub op: BenchOp,
    pub spec: KeySpec,
    pub algorithm: SigningAlgorithm,
    pub threads: usize,
    /// `--pin`: the CPUs the raw threads run on.
    pub work_cpus: Option<Vec<usize>>,
}

/// The baseline, set up on the token: its own key (destroyed by `close`), one logged-in
/// session per thread.
pub struct RawBench {
    pkcs11: Pkcs11,
    admin: Session,
    objects: [Option<ObjectHandle>; 3],
    op: Op,
    sessions: Vec<Session>,
    work_cpus: Option<Vec<usize>>,
}

impl RawBench {
    /// Opens the token of `cfg`, makes the key as hsmd does and the sessions.
    pub fn open(cfg: &Config, spec: &RawSpec) -> anyhow::Result<RawBench> {
        let pkcs11 = Pkcs11::new(&cfg.hsm.module).context("load module")?;
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let slot =
            hsmd::baseline::find_slot(&pkcs11, &cfg.hsm.token_label).map_err(anyhow::Error::msg)?;
        let admin = pkcs11.open_rw_session(slot)?;
        admin
            .login(UserType::User, Some(&cfg.hsm.pin))
            .context("C_Login")?;
        let id = uuid::Uuid::new_v4();
        let usage = if spec.op.encrypts() {
            KeyUsage::EncryptDecrypt
        } else {
            KeyUsage::SignVerify
        };
        let template =
            objects::generation(spec.spec, usage, id.as_bytes(), &format!("raw-bench-{id}"))
                .context("key spec")?;
        let key = objects::generate(&admin, &template).context("generate key")?;
        // The same mechanism choice as hsmd's: the token hashes ECDSA messages if it can.
        let ecdsa_hashes = ecdsa_hashes(&pkcs11.get_mechanism_list(slot)?);
        // From here on an error drops `bench`, which destroys the key.
        let mut bench = RawBench {
            pkcs11,
            admin,
            objects: [None, Some(key.private), key.public],
            op: Op {
                op: spec.op,
                algorithm: spec.algorithm,
                key,
                prepared: Vec::new(),
                ecdsa_hashes,
            },
            sessions: Vec::new(),
            work_cpus: spec.work_cpus.clone(),
        };
        // Use the key as hsmd does: through a session-object copy of the private key.
        let copy = bench
            .admin
            .copy_object(key.private, &[Attribute::Token(false)])
            .context("C_CopyObject")?;
        bench.objects[0] = Some(copy);
        bench.op.key.private = copy;
        for _ in 0..spec.threads.max(1) {
            let session = bench.pkcs11.open_rw_session(slot)?;
            bench.sessions.push(session);
        }
        // Verify checks a signature and decrypt opens a ciphertext, both made once here.
        let (mech, input) = mechanism(
            spec.algorithm,
            MessageType::Raw,
            BENCH_MESSAGE,
            &bench.op.ecdsa_hashes,
        );
        let first = &bench.sessions[0];
        bench.op.prepared = match spec.op {
            BenchOp::Verify => first.sign(
                &mech.mechanism(),
                bench.op.key.private,
                &mech.token_input(&input),
            )?,
            BenchOp::Decrypt => {
                first.encrypt(&oaep(OaepHash::Sha1), public(bench.op.key), BENCH_MESSAGE)?
            }
            _ => Vec::new(),
        };
        Ok(bench)
    }

    /// One measured slice of `length` after `warmup` (unmeasured), and the CPU time the
    /// threads doing the token work spent in the measured part.
    pub fn measure(
        &mut self,
        warmup: Duration,
        length: Length,
    ) -> anyhow::Result<(Samples, Duration)> {
        let mut sessions = std::mem::take(&mut self.sessions);
        let pin = self.work_cpus.as_deref();
        if !warmup.is_zero() {
            sessions = drive(sessions, &self.op, Length::Duration(warmup), pin, None)?.sessions;
        }
        let run = drive(sessions, &self.op, length, pin, None)?;
        self.sessions = run.sessions;
        Ok((
            Samples {
                micros: run.micros,
                errors: run.errors,
                elapsed: run.elapsed,
            },
            run.cpu,
        ))
    }

    /// `--floor`, third part: what the token work costs more when the CPU goes idle
    /// once per durable group, as hsmd's does while a group's `fdatasync` runs and every
    /// call of the group waits for it. One session, on the work CPUs, makes `length`
    /// calls without a pause and `length` calls pausing `pause.each` after every
    /// `pause.every` of them (in the order `paused_first` says). Raw's own loop never
    /// idles, so its CPU per call leaves this cost out.
    pub fn idle_cost(
        &mut self,
        length: Length,
        pause: Pause,
        paused_first: bool,
    ) -> anyhow::Result<IdleCost> {
        let mut rest = std::mem::take(&mut self.sessions);
        if rest.is_empty() {
            anyhow::bail!("idle floor: no session left (an earlier side failed)");
        }
        let mut one = vec![rest.remove(0)];
        let pin = self.work_cpus.as_deref();
        let mut cost = IdleCost::default();
        let order = if paused_first {
            [Some(pause), None]
        } else {
            [None, Some(pause)]
        };
        let mut errors = 0;
        for p in order {
            // A failed thread takes its session with it; the run stops on the error.
            let run = drive(one, &self.op, length, pin, p)?;
            let side = if p.is_some() {
                &mut cost.paused
            } else {
                &mut cost.steady
            };
            side.0 += run.cpu;
            side.1 += run.micros.len() as u64;
            errors += run.errors;
            one = run.sessions;
        }
        rest.splice(0..0, one);
        self.sessions = rest;
        anyhow::ensure!(errors == 0, "idle floor: {errors} token errors");
        Ok(cost)
    }

    /// Destroys the key, closes the sessions and finalizes the module.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.destroy_key();
        self.sessions.clear();
        let pkcs11 = self.pkcs11.clone();
        drop(self);
        pkcs11.finalize()?;
        Ok(())
    }

    fn destroy_key(&mut self) {
        for h in std::mem::take(&mut self.objects).into_iter().flatten() {
            let _ = self.admin.destroy_object(h);
        }
    }
}

/// The baseline's key is destroyed however the run ends (an error in a round too).
impl Drop for RawBench {
    fn drop(&mut self) {
        self.destroy_key();
    }
}

struct Op {
    op: BenchOp,
    algorithm: SigningAlgorithm,
    key: KeyObjects,
    /// Verify: the signature; decrypt: the ciphertext.
    prepared: Vec<u8>,
    /// The hashes the token does for ECDSA (CKM_ECDSA_SHA*), as hsmd's capabilities.
    ecdsa_hashes: Vec<HashAlg>,
}

impl Op {
    /// One call, doing what hsmd does for it: prepare the input, then the token call.
    fn call(&self, s: &Session) -> cryptoki::error::Result<()> {
        let signing = || {
            let (mech, input) = mechanism(
                self.algorithm,
                MessageType::Raw,
                BENCH_MESSAGE,
                &self.ecdsa_hashes,
            );
            (mech.mechanism(), mech.token_input(&input))
        };
        match self.op {
            BenchOp::Sign => {
                let (mech, data) = signing();
                s.sign(&mech, self.key.private, &data).map(drop)
            }
            BenchOp::Verify => {
                let (mech, data) = signing();
                s.verify(&mech, public(self.key), &data, &self.prepared)
            }
            BenchOp::Decrypt => s
                .decrypt(&oaep(OaepHash::Sha1), self.key.private, &self.prepared)
                .map(drop),
            BenchOp::Encrypt => gcm_encrypt(s, self.key.private, BENCH_MESSAGE),
            BenchOp::GenerateDataKey => {
                let data_key = s.generate_random_vec(32)?;
                gcm_encrypt(s, self.key.private, &data_key)
            }
            BenchOp::GetPublicKey => s
                .get_attributes(
                    public(self.key),
                    &[AttributeType::Modulus, AttributeType::EcPoint],
                )
                .map(|a: Vec<Attribute>| drop(a)),
        }
    }
}

/// What hsmd's Encrypt does in the token: a fresh IV, then AES-GCM with the blob header
/// as AAD.
fn gcm_encrypt(s: &Session, key: ObjectHandle, data: &[u8]) -> cryptoki::error::Result<()> {
    let mut iv = s.generate_random_vec(12)?;
    let aad = [0u8; 21];
    s.encrypt(&aes_gcm(&mut iv, &aad)?, key, data).map(drop)
}

fn public(k: KeyObjects) -> ObjectHandle {
    k.public.unwrap_or(k.private)
}

/// A pause of `each` after every `every` calls (see [`RawBench::idle_cost`]).
#[derive(Clone, Copy, Debug)]
pub struct Pause {
    pub every: u64,
    pub each: Duration,
}

/// CPU time and calls of one session's loop without pauses (`steady`) and with them.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleCost {
    pub steady: (Duration, u64),
    pub paused: (Duration, u64),
}

impl IdleCost {
    pub fn add(&mut self, other: IdleCost) {
        self.steady.0 += other.steady.0;
        self.steady.1 += other.steady.1;
        self.paused.0 += other.paused.0;
        self.paused.1 += other.paused.1;
    }
}

/// What one `drive` measured, and the sessions back.
struct Driven {
    micros: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    /// CPU time of the threads' loops (CLOCK_THREAD_CPUTIME_ID), summed.
    cpu: Duration,
    sessions: Vec<Session>,
}

/// Runs one thread per session (a `Session` is Send, not Sync: each thread owns one),
/// each pinned to `pin` when given, and hands the sessions back.
fn drive(
    sessions: Vec<Session>,
    op: &Op,
    length: Length,
    pin: Option<&[usize]>,
    pause: Option<Pause>,
) -> anyhow::Result<Driven> {
    let start = Instant::now();
    let deadline = match length {
        Length::Duration(d) => Some(start + d),
        Length::Calls(_) => None,
    };
    let remaining = Arc::new(AtomicI64::new(match length {
        Length::Calls(n) => n as i64,
        Length::Duration(_) => i64::MAX,
    }));
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|s| {
                let remaining = remaining.clone();
                scope.spawn(move || {
                    if let Some(cpus) = pin {
                        crate::pin::pin_current_thread(cpus)?;
                    }
                    let cpu0 = crate::pin::thread_cpu();
                    let (mut micros, mut errors) = (Vec::with_capacity(4096), 0u64);
                    while deadline.is_none_or(|d| Instant::now() < d)
                        && remaining.fetch_sub(1, Ordering::Relaxed) > 0
                    {
                        let t = Instant::now();
                        match op.call(&s) {
                            Ok(()) => {
                                micros.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                            }
                            Err(_) => errors += 1,
                        }
                        if let Some(p) = pause
                            && (micros.len() as u64 + errors).is_multiple_of(p.every.max(1))
                        {
                            std::thread::sleep(p.each);
                        }
                    }
                    Ok::<_, nix::Error>((micros, errors, crate::pin::thread_cpu() - cpu0, s))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let elapsed = start.elapsed();
    let mut out = Driven {
        micros: Vec::new(),
        errors: 0,
        elapsed,
        cpu: Duration::ZERO,
        sessions: Vec::new(),
    };
    for r in results {
        let (m, e, cpu, s) = r
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
            .context("pinning a raw thread (sched_setaffinity)")?;
        out.micros.extend(m);
        out.errors += e;
        out.cpu += cpu;
        out.sessions.push(s);
    }
    Ok(out)
}
