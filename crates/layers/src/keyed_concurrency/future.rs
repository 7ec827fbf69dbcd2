use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Permit;
use crate::Either;

pin_project! {
    /// Response future of [`super::KeyedConcurrency`]: holds the permit until the response is
    /// there (or the future is dropped).
    pub struct ResponseFuture<F, RF, K>
    where
        K: Hash,
        K: Eq,
    {
        #[pin]
        response: Either<F, RF>,
        permit: Option<Permit<K>>,
    }
}

impl<F, RF, K: Hash + Eq> ResponseFuture<F, RF, K> {
    pub(super) fn inner(future: F, permit: Option<Permit<K>>) -> Self {
        Self {
            response: Either::inner(future),
            permit,
        }
    }

    pub(super) fn rejected(future: RF) -> Self {
        Self {
            response: Either::rejected(future),
            permit: None,
        }
    }
}

impl<F, RF, K, T, E> Future for ResponseFuture<F, RF, K>
where
    F: Future<Output = Result<T, E>>,
    RF: Future<Output = Result<T, E>>,
    K: Hash + Eq,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.response.poll(cx));
        this.permit.take();
        Poll::Ready(output)
    }
}
