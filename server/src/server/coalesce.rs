//! Answers released together leave together.
//!
//! A durable audit group answers its calls at once: the writer wakes every call of the
//! group in one go. Each call's task then hands its answer to h2 and wakes the
//! connection's task, and the runtime runs a task woken that way next (tokio's LIFO
//! slot, or the local queue before the one the writer fills). So the connection
//! flushed after every answer: at 8 calls in flight, one `writev` (one TCP segment
//! through the kernel, one wake-up of the client) per call.
//!
//! [`Coalesce`] holds a connection's first write after a flush, while other calls are
//! running, until the worker has run the other tasks ready at that moment (a deferred
//! wake, as `tokio::task::yield_now` does). The answers of one group then leave in one
//! write. A lone call is never held: no other call is running when its answer is
//! written. A held write waits for the tasks already ready, never for a call still
//! waiting on the token or the disk.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::api::complete::Running;

/// A connection's write side: whether its next write waits for the tasks ready now.
pub(super) struct Coalesce {
    running: Running,
    /// A write since the last flush has not been held yet.
    armed: bool,
    /// The held write's release, until it comes.
    held: Option<Arc<Release>>,
}

/// Set when the runtime gets to the deferred wake, that is after the tasks that were
/// ready when the write was held.
#[derive(Default)]
struct Release {
    done: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Release {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Coalesce {
    /// Holds writes while `running` counts other calls.
    pub(super) fn new(running: Running) -> Self {
        Coalesce {
            running,
            armed: true,
            held: None,
        }
    }

    /// True if the write must wait; the task is woken when it may go. The connection's
    /// task may be polled again before then (every answer handed to h2 wakes it), and
    /// is held until its release.
    pub(super) fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if self.held.is_some() {
            return self.waiting(cx);
        }
        if !self.armed || !self.running.any() {
            return false;
        }
        self.armed = false;
        let release = Arc::new(Release::default());
        release.task.register(cx.waker());
        let waker = Waker::from(release.clone());
        // `yield_now` defers its wake until the worker has run the tasks ready now
        // (outside a runtime it wakes at once); it is polled once, for that wake.
        let later = std::pin::pin!(tokio::task::yield_now());
        if later.poll(&mut Context::from_waker(&waker)).is_ready() {
            return false;
        }
        self.held = Some(release);
        true
    }

    /// True while a held write waits for its release (a flush waits with it); the task
    /// is woken when it comes.
    pub(super) fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(release) = &self.held else {
            return false;
        };
        release.task.register(cx.waker());
        if !release.done.load(Ordering::Acquire) {
            return true;
        }
        self.held = None;
        false
    }

    /// A flush completed: the next write may be held again.
    pub(super) fn flushed(&mut self) {
        self.armed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_call_is_never_held() {
        let running = Running::default();
        let mut c = Coalesce::new(running);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(!c.hold(&mut cx), "nothing else running");
        c.flushed();
        assert!(!c.hold(&mut cx));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waits_for_the_tasks_ready_before_it() {
        let running = Running::default();
        let _other = running.enter();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A task that is ready when the write is held, as another call's answer is.
        let o = order.clone();
        let other = tokio::spawn(async move { o.lock().unwrap().push("other answer") });
        let o = order.clone();
        let mut c = Coalesce::new(running.clone());
        let mut polls = 0;
        std::future::poll_fn(|cx| {
            polls += 1;
            if c.hold(cx) {
                return std::task::Poll::Pending;
            }
            o.lock().unwrap().push("write");
            std::task::Poll::Ready(())
        })
        .await;
        other.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["other answer", "write"]);
        assert_eq!(polls, 2, "held once, then written");
        // Held once per flush: the next write of the same burst goes at once, ...
        let mut cx = Context::from_waker(Waker::noop());
        assert!(!c.hold(&mut cx));
        // ... and after a flush the first write is held again.
        c.flushed();
        assert!(c.hold(&mut cx));
    }
}
