//! Calls run to completion even when the client goes away. Each call's handler runs in
//! a task of its own: a client that cancels a call (a deadline, a lost connection)
//! drops only its wait for the answer, never the handler between a key change and its
//! audit record.
//!
//! It also counts the calls running ([`Running`]), so that quick key work can let the
//! others take their turn first (`ApiState::with_key`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// The calls a server is running: spawned and not yet finished, in any state (waiting
/// for the worker, for the blocking pool, for their audit record).
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<AtomicUsize>);

impl Running {
    /// True if a call other than the caller's is running.
    pub(crate) fn others(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 1
    }

    /// True if any call is running.
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Counts one call until the returned guard is dropped.
    pub(crate) fn enter(&self) -> Counted {
        self.0.fetch_add(1, Ordering::Relaxed);
        Counted(self.0.clone())
    }
}

/// One call counted in [`Running`] while it lives.
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tower middleware that spawns every call of the wrapped service, counting it in
/// `running`.
#[derive(Debug, Clone)]
pub(crate) struct RunToCompletion<S> {
    inner: S,
    running: Running,
}

impl<S> RunToCompletion<S> {
    /// A layer counting its calls in `running`.
    pub(crate) fn layer(running: Running) -> impl tower_layer::Layer<S, Service = Self> + Clone {
        tower_layer::layer_fn(move |inner| RunToCompletion {
            inner,
            running: running.clone(),
        })
    }
}

impl<S, Req> tower_service::Service<Req> for RunToCompletion<S>
where
    S: tower_service::Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let call = self.inner.call(req);
        let counted = self.running.enter();
        let task = tokio::spawn(async move {
            let _counted = counted;
            call.await
        });
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                // Nothing aborts the task, so it can only have panicked: pass it on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tower_service::Service;

    /// A service whose calls end when the test says so.
    #[derive(Clone)]
    struct Held;

    impl Service<oneshot::Receiver<()>> for Held {
        type Response = ();
        type Error = ();
        type Future = Pin<Box<dyn Future<Output = Result<(), ()>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, release: oneshot::Receiver<()>) -> Self::Future {
            Box::pin(async move {
                let _ = release.await;
                Ok(())
            })
        }
    }

    /// A call counts from its arrival until its handler ends, also when its caller
    /// stopped waiting for it.
    #[tokio::test]
    async fn calls_count_until_their_handlers_end() {
        let running = Running::default();
        let mut svc = RunToCompletion {
            inner: Held,
            running: running.clone(),
        };
        let count = || running.0.load(Ordering::Relaxed);
        let (end_a, a) = oneshot::channel();
        let answer_a = svc.call(a);
        assert_eq!(count(), 1);
        assert!(!running.others(), "a lone call has no others");
        let (end_b, b) = oneshot::channel();
        let answer_b = svc.call(b);
        assert_eq!(count(), 2);
        assert!(running.others());
        end_a.send(()).unwrap();
        answer_a.await.unwrap();
        assert_eq!(count(), 1);
        // The caller of b goes away: b still runs, and counts, until its handler ends.
        drop(answer_b);
        tokio::task::yield_now().await;
        assert_eq!(count(), 1);
        end_b.send(()).unwrap();
        for _ in 0..100 {
            if count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(count(), 0);
    }
}
