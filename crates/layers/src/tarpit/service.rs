use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::ResponseFuture;
use super::layer::Budget;
use crate::{Mode, Reject, Rejection};

/// Holds requests for a computed delay within a budget; see the module docs.
#[derive(Debug, Clone)]
pub struct Tarpit<S, F, R> {
    inner: S,
    budget: Arc<Budget>,
    delay: F,
    reject: R,
}

impl<S, F, R> Tarpit<S, F, R> {
    pub(super) fn new(inner: S, budget: Arc<Budget>, delay: F, reject: R) -> Self {
        Self {
            inner,
            budget,
            delay,
            reject,
        }
    }
}

impl<S, F, R, Req> Service<Req> for Tarpit<S, F, R>
where
    S: Service<Req>,
    F: Fn(&Req) -> std::time::Duration,
    R: Reject<Req, Response = S::Response, Error = S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let delay = (self.delay)(&req);
        if delay.is_zero() {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        if self.budget.mode == Mode::DryRun {
            self.budget.metrics.would_hold.increment(1);
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        match self.budget.try_acquire() {
            Some(permit) => {
                self.budget.metrics.held.increment(1);
                self.budget
                    .metrics
                    .delay_seconds
                    .record(delay.as_secs_f64());
                ResponseFuture::inner(self.inner.call(req), Some((delay, permit)))
            }
            None => {
                self.budget.metrics.over_budget.increment(1);
                let rejection = Rejection {
                    layer: "tarpit",
                    rule: "budget".into(),
                    retry_after: Some(delay),
                };
                ResponseFuture::rejected(self.reject.reject(req, rejection))
            }
        }
    }
}
