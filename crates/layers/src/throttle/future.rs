use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

/// The wait before a throttled request goes on.
pub(super) type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project! {
    /// Response future of [`super::Throttle`]: waits for the budget, then the inner future.
    pub struct ResponseFuture<F> {
        wait: Option<Wait>,
        #[pin]
        inner: F,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, wait: Option<Wait>) -> Self {
        Self { wait, inner }
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(wait) = this.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            *this.wait = None;
        }
        this.inner.poll(cx)
    }
}
