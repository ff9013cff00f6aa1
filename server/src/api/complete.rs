//! Calls run to completion even when the client goes away. Each call's handler runs in
//! a task of its own: a client that cancels a call (a deadline, a lost connection)
//! drops only its wait for the answer, never the handler between a key change and its
//! audit record.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Tower middleware that spawns every call of the wrapped service.
#[derive(Debug, Clone)]
pub(crate) struct RunToCompletion<S>(pub S);

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
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let task = tokio::spawn(self.0.call(req));
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                // Nothing aborts the task, so it can only have panicked: pass it on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        })
    }
}
