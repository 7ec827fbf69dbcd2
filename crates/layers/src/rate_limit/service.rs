use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::Shared;
use crate::slot::{Slot, call_later};
use crate::{Either, Mode, Reject, Rejection};

/// Limits the request rate per key; see the module docs.
pub struct RateLimit<S, K: Hash + Eq + Clone, F, R, C: Clock> {
    inner: Slot<S>,
    shared: Arc<Shared<K, C>>,
    mode: Mode,
    key: F,
    reject: R,
}

impl<S: Clone, K: Hash + Eq + Clone, F: Clone, R: Clone, C: Clock> Clone
    for RateLimit<S, K, F, R, C>
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            mode: self.mode,
            key: self.key.clone(),
            reject: self.reject.clone(),
        }
    }
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
        let later = shared.fleet.is_some();
        Self {
            inner: Slot::new(inner, later),
            shared,
            mode,
            key,
            reject,
        }
    }
}

/// A refused request: counted, and the rejection to answer it with (`None` in a dry run: let
/// through).
fn refuse<K, C>(shared: &Shared<K, C>, mode: Mode, retry_after: Duration) -> Option<Rejection>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    if mode == Mode::DryRun {
        shared.metrics.would_reject.increment(1);
        tracing::info!(rule = %shared.name, ?retry_after, "rate limit would refuse (dry-run)");
        return None;
    }
    shared.metrics.rejected.increment(1);
    Some(Rejection {
        layer: "rate",
        rule: shared.name.clone(),
        retry_after: Some(retry_after),
    })
}

impl<S, K, F, R, C, Req> Service<Req> for RateLimit<S, K, F, R, C>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Req) -> Option<K>,
    R: Reject<Req, Response = S::Response, Error = S::Error> + Clone + Send + Sync + 'static,
    R::Future: Send + 'static,
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return Either::inner(Either::inner(self.inner.call(req)));
        };
        let (shared, mode) = (self.shared.clone(), self.mode);
        shared.tick();
        let fleet_key = shared
            .fleet
            .as_ref()
            .and_then(|fleet| Some((fleet, (fleet.encode)(&key)?)));
        let Some((fleet, name)) = fleet_key else {
            // The process decides at once.
            return match shared
                .gcra
                .check(&key)
                .err()
                .and_then(|w| refuse(&shared, mode, w))
            {
                None => Either::inner(Either::inner(self.inner.call(req))),
                Some(why) => Either::inner(Either::rejected(self.reject.reject(req, why))),
            };
        };
        // A key the store refused is refused from here until its next cell: a flood costs no
        // round trip per refused request.
        if let Some(wait) = shared.refused_for(&key) {
            return match refuse(&shared, mode, wait) {
                None => Either::inner(Either::inner(self.inner.call(req))),
                Some(why) => Either::inner(Either::rejected(self.reject.reject(req, why))),
            };
        }
        // Cells taken in an earlier batch are spent here, with no round trip.
        if shared.take_spare(&key) {
            return Either::inner(Either::inner(self.inner.call(req)));
        }
        let (interval, burst) = shared.gcra.terms();
        let ask = fleet.store.gcra(
            format!("{}:{name}", shared.name),
            interval,
            burst,
            crate::fleet::batch(burst),
        );
        let inner = self
            .inner
            .handle()
            .expect("a fleet rule shares its inner service");
        let reject = self.reject.clone();
        Either::rejected(Box::pin(async move {
            let verdict = match ask.await {
                Ok(Ok(cells)) => {
                    shared.keep_spare(key, cells);
                    Ok(())
                }
                Ok(Err(wait)) => {
                    shared.remember_refusal(key, wait);
                    Err(wait)
                }
                // The store is away: this process's own buckets decide (the store counts the
                // error and the degraded mode).
                Err(_) => shared.gcra.check(&key),
            };
            match verdict.err().and_then(|w| refuse(&shared, mode, w)) {
                None => call_later(&inner, req).await,
                Some(why) => reject.reject(req, why).await,
            }
        }))
    }
}
