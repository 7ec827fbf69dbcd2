use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::Shared;
use crate::{Mode, Reject, Rejection};

/// Limits the request rate per key; see the module docs.
#[derive(Clone)]
pub struct RateLimit<S, K: Hash + Eq + Clone, F, R, C: Clock> {
    inner: S,
    shared: Arc<Shared<K, C>>,
    mode: Mode,
    key: F,
    reject: R,
}

impl<S: std::fmt::Debug, K: Hash + Eq + Clone, F, R, C: Clock> std::fmt::Debug
    for RateLimit<S, K, F, R, C>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("rule", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, K: Hash + Eq + Clone, F, R, C: Clock> RateLimit<S, K, F, R, C> {
    pub(super) fn new(inner: S, shared: Arc<Shared<K, C>>, mode: Mode, key: F, reject: R) -> Self {
        Self {
            inner,
            shared,
            mode,
            key,
            reject,
        }
    }
}

impl<S, K, F, R, C, Req> Service<Req> for RateLimit<S, K, F, R, C>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> Option<K>,
    R: Reject<Req, Response = S::Response, Error = S::Error>,
    C: Clock + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let shared = &self.shared;
        let verdict = shared.gcra.check(&key);
        shared.tick();
        let Err(retry_after) = verdict else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        if self.mode == Mode::DryRun {
            shared.metrics.would_reject.increment(1);
            tracing::info!(rule = %shared.name, ?retry_after, "rate limit would refuse (dry-run)");
            return ResponseFuture::inner(self.inner.call(req));
        }
        shared.metrics.rejected.increment(1);
        let rejection = Rejection {
            layer: "rate",
            rule: shared.name.clone(),
            retry_after: Some(retry_after),
        };
        ResponseFuture::rejected(self.reject.reject(req, rejection))
    }
}
