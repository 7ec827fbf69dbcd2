use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::layer::BudgetPermit;
use crate::Either;

pin_project! {
    /// Response future of [`super::Tarpit`]: the hold (with its share of the budget), then the
    /// inner future; or the rejection.
    pub struct ResponseFuture<F, RF> {
        hold: Option<(Pin<Box<Sleep>>, BudgetPermit)>,
        #[pin]
        response: Either<F, RF>,
    }
}

impl<F, RF> ResponseFuture<F, RF> {
    pub(super) fn inner(future: F, hold: Option<(Duration, BudgetPermit)>) -> Self {
        Self {
            hold: hold.map(|(delay, permit)| (Box::pin(tokio::time::sleep(delay)), permit)),
            response: Either::inner(future),
        }
    }

    pub(super) fn rejected(future: RF) -> Self {
        Self {
            hold: None,
            response: Either::rejected(future),
        }
    }
}

impl<F, RF, T, E> Future for ResponseFuture<F, RF>
where
    F: Future<Output = Result<T, E>>,
    RF: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some((sleep, _permit)) = this.hold.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            // The hold is over: give the budget back before the inner work.
            *this.hold = None;
        }
        this.response.poll(cx)
    }
}
