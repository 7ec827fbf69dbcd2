use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::{Local, Shared};
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
        // Decided at once: without a fleet, by the process's GCRA; with one, from what the
        // process knows (a cell of an earlier batch spent, or a key the store refused, refused
        // until its next cell: neither costs a round trip, so a flood costs none).
        let (fleet, name) = match shared.fleet.as_ref().map(|f| (f, shared.local(&key))) {
            None => return self.at_once(req, shared.gcra.check(&key)),
            Some((_, Local::Spent)) => return self.at_once(req, Ok(())),
            Some((_, Local::Refused(wait))) => return self.at_once(req, Err(wait)),
            Some((fleet, Local::Ask)) => match (fleet.encode)(&key) {
                Some(name) => (fleet, name),
                // A key the fleet does not share.
                None => return self.at_once(req, shared.gcra.check(&key)),
            },
        };
        let (interval, burst) = shared.gcra.terms();
        let batch = crate::fleet::batch(burst);
        let ask = fleet
            .store
            .gcra(format!("{}:{name}", shared.name), interval, burst, batch);
        let inner = self
            .inner
            .handle()
            .expect("a fleet rule shares its inner service");
        let reject = self.reject.clone();
        Either::rejected(Box::pin(async move {
            let verdict = match ask.await {
                Ok(granted) => {
                    let verdict = granted.map(|_| ());
                    shared.learn(key, granted, batch);
                    verdict
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

impl<S, K, F, R, C> RateLimit<S, K, F, R, C>
where
    K: Hash + Eq + Clone,
    C: Clock + Clone,
{
    /// A verdict reached without waiting: the inner service's answer, or the rejection's.
    fn at_once<Req>(
        &mut self,
        req: Req,
        verdict: Result<(), Duration>,
    ) -> ResponseFuture<S::Future, R::Future, S::Response, S::Error>
    where
        S: Service<Req>,
        R: Reject<Req, Response = S::Response, Error = S::Error>,
    {
        match verdict
            .err()
            .and_then(|w| refuse(&self.shared, self.mode, w))
        {
            None => Either::inner(Either::inner(self.inner.call(req))),
            Some(why) => Either::inner(Either::rejected(self.reject.reject(req, why))),
        }
    }
}
