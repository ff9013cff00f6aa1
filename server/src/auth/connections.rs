//! Open connections per principal (`tls.max_connections_per_principal`). Each verified
//! TLS connection holds a [`Slot`] of its principal for as long as it is open. Past the
//! limit a connection is still served, but only so that each of its calls gets a clear
//! answer (RESOURCE_EXHAUSTED, reason CONNECTION_LIMIT, audited like any refusal), and
//! the listener closes it soon after; one principal's flood of connections so costs the
//! others nothing but the handshakes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The count of open connections of each principal, and the connections past the limit.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max: usize,
    /// How many connections are past the limit: while 0 (almost always), a call's check
    /// takes no lock.
    over_count: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<String, usize>,
    over: HashSet<SocketAddr>,
}

/// One open connection's place in [`ConnectionLimits`]; dropping it (the connection
/// closed) frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnectionLimits>,
    principal: String,
    addr: SocketAddr,
    over: bool,
}

impl ConnectionLimits {
    /// At most `max` open connections per principal.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max,
            over_count: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        })
    }

    /// The most connections a principal may have open.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Admits the connection from `addr` of `principal` ("" for a certificate that names
    /// none): within the limit it counts against the principal, past it it is marked
    /// over the limit ([`Slot::over`]).
    pub(crate) fn admit(self: &Arc<Self>, principal: &str, addr: SocketAddr) -> Slot {
        let mut s = self.lock();
        let open = s.open.entry(principal.to_string()).or_default();
        let over = *open >= self.max;
        if over {
            s.over.insert(addr);
            self.over_count.fetch_add(1, Ordering::Relaxed);
        } else {
            *open += 1;
        }
        Slot {
            limits: self.clone(),
            principal: principal.to_string(),
            addr,
            over,
        }
    }

    /// Whether the connection from `addr` is past its principal's limit.
    pub(crate) fn is_over(&self, addr: Option<SocketAddr>) -> bool {
        match addr {
            Some(a) if self.over_count.load(Ordering::Relaxed) > 0 => self.lock().over.contains(&a),
            _ => false,
        }
    }

    /// How many connections `principal` has open within its limit.
    #[cfg(test)]
    pub(crate) fn open(&self, principal: &str) -> usize {
        self.lock().open.get(principal).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Slot {
    /// Whether this connection is past its principal's limit.
    pub(crate) fn over(&self) -> bool {
        self.over
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut s = limits.lock();
        if self.over {
            s.over.remove(&self.addr);
            limits.over_count.fetch_sub(1, Ordering::Relaxed);
        } else if let Some(n) = s.open.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                s.open.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn past_the_limit_is_marked_and_closing_frees_a_place() {
        let limits = ConnectionLimits::new(2);
        let a = limits.admit("alice", addr(1));
        let b = limits.admit("alice", addr(2));
        let bob = limits.admit("bob", addr(3));
        assert!(!a.over() && !b.over() && !bob.over());
        let third = limits.admit("alice", addr(4));
        assert!(
            third.over(),
            "alice's third connection is past the limit of 2"
        );
        assert!(limits.is_over(Some(addr(4))));
        assert!(!limits.is_over(Some(addr(1))), "her first two are served");
        assert!(!limits.is_over(None));
        assert_eq!(limits.open("alice"), 2);
        drop(third);
        assert!(!limits.is_over(Some(addr(4))));
        drop(a);
        assert_eq!(limits.open("alice"), 1);
        let again = limits.admit("alice", addr(5));
        assert!(!again.over(), "a closed connection frees its place");
        drop((b, again, bob));
        assert_eq!(limits.open("alice"), 0);
        assert!(limits.lock().open.is_empty(), "no entry is left behind");
    }
}
