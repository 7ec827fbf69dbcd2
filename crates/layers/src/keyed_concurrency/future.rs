use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Permit;
use crate::Either;
use crate::slot::BoxResponse;

pin_project! {
    /// Response future of [`super::KeyedConcurrency`]: holds the permit until the response is
    /// there (or the future is dropped). A fleet rule's is boxed: it takes its lease first, and
    /// holds the permit inside.
    pub struct ResponseFuture<F, RF, K, T, E>
    where
        K: Hash,
        K: Eq,
        K: Clone,
        K: Send,
        K: 'static,
    {
        #[pin]
        response: Either<Either<F, RF>, BoxResponse<T, E>>,
        permit: Option<Permit<K>>,
    }
}

impl<F, RF, K: Hash + Eq + Clone + Send + 'static, T, E> ResponseFuture<F, RF, K, T, E> {
    pub(super) fn inner(future: F, permit: Option<Permit<K>>) -> Self {
        Self {
            response: Either::inner(Either::inner(future)),
            permit,
        }
    }

    pub(super) fn rejected(future: RF) -> Self {
        Self {
            response: Either::inner(Either::rejected(future)),
            permit: None,
        }
    }

    pub(super) fn fleet(future: BoxResponse<T, E>) -> Self {
        Self {
            response: Either::rejected(future),
            permit: None,
        }
    }
}

impl<F, RF, K, T, E> Future for ResponseFuture<F, RF, K, T, E>
where
    F: Future<Output = Result<T, E>>,
    RF: Future<Output = Result<T, E>>,
    K: Hash + Eq + Clone + Send + 'static,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.response.poll(cx));
        this.permit.take();
        Poll::Ready(output)
    }
}
