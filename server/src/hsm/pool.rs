//! A bounded pool of logged-in PKCS#11 sessions.
//!
//! Sessions are opened once at start-up (the first one logs in; login is per
//! application, so the others share it) and kept for the life of the process: object
//! handles die with the last session, and opening a session per call is where PKCS#11
//! front ends lose most of their speed. A `Session` is `Send` but not `Sync`, so each is
//! lent to one blocking thread at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::error::{HsmError, classify};
use crate::metrics::Metrics;

/// How long a call waits for a free session before it gives up with UNAVAILABLE.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct SessionPool {
    pkcs11: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    idle: Mutex<Vec<Session>>,
    freed: Condvar,
    /// Callers waiting on `freed`, changed only under `idle`'s lock: a session put back
    /// wakes one only if there is one (the condition variable's notify is a system call
    /// even when nobody waits, one per token operation).
    waiting: AtomicUsize,
    size: usize,
    /// Sessions in use and callers waiting, as gauges.
    metrics: Arc<Metrics>,
    /// Bumped by every module re-initialization: a session of an older generation
    /// belongs to a finalized module and is never used or closed again.
    generation: AtomicU64,
    /// The module failed a health check and is not re-initialized yet.
    broken: AtomicBool,
    /// Sessions lost and not reopened yet (the token refused C_OpenSession): `get`
    /// opens them again when it finds no idle one, so the pool never shrinks for good.
    missing: AtomicUsize,
}

/// A session borrowed from the pool; it goes back on drop unless marked lost.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
    generation: u64,
}

impl SessionPool {
    /// Opens `size` read-write sessions and logs the user in once.
    pub(crate) fn open(
        pkcs11: Pkcs11,
        slot: Slot,
        pin: AuthPin,
        size: usize,
    ) -> Result<Self, HsmError> {
        let size = size.max(1);
        let sessions = open_all(&pkcs11, slot, &pin, size)?;
        Ok(SessionPool {
            pkcs11,
            slot,
            pin,
            idle: Mutex::new(sessions),
            freed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            size,
            metrics: Default::default(),
            generation: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            missing: AtomicUsize::new(0),
        })
    }

    /// Records the pool's size, sessions in use and waiters into `metrics` from now on.
    pub(crate) fn observe(&mut self, metrics: Arc<Metrics>) {
        metrics.pool_size.set(self.size as i64);
        self.metrics = metrics;
    }

    /// True after a failed health check, until [`SessionPool::reinitialize`] succeeds.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Marks the module as needing re-initialization.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// C_Finalize, C_Initialize, a fresh set of sessions and a new login: what brings
    /// tpm2-pkcs11 back after its TPM or resource manager restarted (its TCTI lives from
    /// C_Initialize to C_Finalize). The caller guarantees that no session is lent out
    /// (`Pkcs11Backend` holds its module lock exclusively); sessions of the old module
    /// still lent out are forgotten when they come back, never closed: their handle
    /// numbers may name sessions of the new module.
    pub(crate) fn reinitialize(&self) -> Result<(), HsmError> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let _ = self.pkcs11.clone().finalize();
        self.pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| classify("C_Initialize", e))?;
        *idle = open_all(&self.pkcs11, self.slot, &self.pin, self.size)?;
        self.missing.store(0, Ordering::Release);
        self.broken.store(false, Ordering::Release);
        self.freed.notify_all();
        Ok(())
    }

    /// Number of sessions in the pool.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Borrows a session, waiting for one to be free.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>, HsmError> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(session) = idle.pop() {
                self.metrics.pool_in_use.inc();
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                    generation: self.generation.load(Ordering::Acquire),
                });
            }
            if self.is_broken() {
                return Err(HsmError::Unavailable(
                    "the token failed a health check; re-initializing the module".into(),
                ));
            }
            if let Some(session) = self.reopen_missing()? {
                self.metrics.pool_in_use.inc();
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                    generation: self.generation.load(Ordering::Acquire),
                });
            }
            self.metrics.pool_waiters.inc();
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let (guard, timeout) = self
                .freed
                .wait_timeout(idle, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|p| p.into_inner());
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.metrics.pool_waiters.dec();
            idle = guard;
            if timeout.timed_out() && idle.is_empty() {
                return Err(HsmError::Unavailable("no free token session".into()));
            }
        }
    }

    fn put_back(&self, generation: u64, session: Session) {
        if generation != self.generation.load(Ordering::Acquire) {
            std::mem::forget(session);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(session);
        let waiting = self.waiting.load(Ordering::Relaxed) > 0;
        drop(idle);
        if waiting {
            self.freed.notify_one();
        }
    }

    /// Replaces a session the token no longer knows, logging in again if needed. If the
    /// token refuses a new session now, the place stays open for `get` to fill later.
    fn replace(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        match self.open_logged_in() {
            Ok(session) => self.put_back(generation, session),
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen a lost token session; retried when a call needs it");
                self.missing.fetch_add(1, Ordering::AcqRel);
                // A waiter must learn that it can try to open one itself.
                self.freed.notify_one();
            }
        }
    }

    /// Opens one of the sessions lost earlier, if any is missing (called with no idle
    /// session). `Ok(None)`: nothing missing, wait for a session to come back.
    fn reopen_missing(&self) -> Result<Option<Session>, HsmError> {
        let taken = self
            .missing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| m.checked_sub(1));
        if taken.is_err() {
            return Ok(None);
        }
        match self.open_logged_in() {
            Ok(session) => {
                tracing::info!("reopened a lost token session");
                Ok(Some(session))
            }
            Err(e) => {
                self.missing.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// A new read-write session, logged in (login is per application: after every
    /// session was lost the token may have forgotten it).
    fn open_logged_in(&self) -> Result<Session, HsmError> {
        let session = self
            .pkcs11
            .open_rw_session(self.slot)
            .map_err(|e| classify("C_OpenSession", e))?;
        login(&session, &self.pin)?;
        Ok(session)
    }
}

/// `size` (at least one) read-write sessions, the user logged in once (login is per
/// application, so the others share it).
fn open_all(
    pkcs11: &Pkcs11,
    slot: Slot,
    pin: &AuthPin,
    size: usize,
) -> Result<Vec<Session>, HsmError> {
    let mut sessions = Vec::with_capacity(size);
    for _ in 0..size {
        sessions.push(
            pkcs11
                .open_rw_session(slot)
                .map_err(|e| classify("C_OpenSession", e))?,
        );
    }
    login(&sessions[0], pin)?;
    Ok(sessions)
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), HsmError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
            Ok(())
        }
        Err(e) => Err(classify("C_Login", e)),
    }
}

impl PooledSession<'_> {
    /// The borrowed session.
    pub(crate) fn session(&self) -> &Session {
        self.session.as_ref().expect("session present until drop")
    }

    /// Marks the session as lost: it is closed and a fresh one takes its place.
    pub(crate) fn mark_lost(mut self) {
        if let Some(s) = self.session.take() {
            self.pool.metrics.pool_in_use.dec();
            if self.generation != self.pool.generation.load(Ordering::Acquire) {
                std::mem::forget(s);
                return;
            }
            drop(s);
            self.pool.replace();
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.metrics.pool_in_use.dec();
            self.pool.put_back(self.generation, s);
        }
    }
}
