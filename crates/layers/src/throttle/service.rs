use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use tower_service::Service;

use super::ResponseFuture;
use super::layer::{DirectLimiter, ThrottleLayer, ThrottleMetrics};
use crate::rate_limit::KeyedLimiter;
use crate::{Mode, TokioClock};

/// Delays requests by their cost; see the module docs.
#[derive(Clone)]
pub struct Throttle<S, K: Hash + Eq + Clone, F, G> {
    inner: S,
    direct: Option<Arc<DirectLimiter>>,
    keyed: Option<Arc<KeyedLimiter<K, TokioClock>>>,
    key: F,
    cost: G,
    metrics: ThrottleMetrics,
    mode: Mode,
    clock: TokioClock,
}

impl<S: std::fmt::Debug, K: Hash + Eq + Clone, F, G> std::fmt::Debug for Throttle<S, K, F, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K: Hash + Eq + Clone, F, G> Throttle<S, K, F, G> {
    pub(super) fn new(
        inner: S,
        direct: Option<Arc<DirectLimiter>>,
        layer: &ThrottleLayer<K, F, G>,
    ) -> Self
    where
        F: Clone,
        G: Clone,
    {
        Self {
            inner,
            direct,
            keyed: layer.keyed.clone(),
            key: layer.key.clone(),
            cost: layer.cost.clone(),
            metrics: layer.metrics.clone(),
            mode: layer.mode,
            clock: layer.clock,
        }
    }
}

/// Takes `units` from a budget, waiting whenever it is short (in pieces of at most one burst).
/// `check` answers: taken, not before this long, or "more than a burst of N".
async fn take(units: u32, check: impl Fn(NonZeroU32) -> Result<Result<(), Duration>, u32>) {
    let mut left = units;
    let mut piece = units;
    while let Some(n) = NonZeroU32::new(left.min(piece)) {
        match check(n) {
            Ok(Ok(())) => left -= n.get(),
            Ok(Err(wait)) => tokio::time::sleep(wait).await,
            Err(burst) => piece = burst.max(1),
        }
    }
}

impl<S, K, F, G, Req> Service<Req> for Throttle<S, K, F, G>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> Option<K>,
    G: Fn(&Req) -> u32,
    K: Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let units = (self.cost)(&req);
        if units == 0 {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        // Fast path: the units fit in the budgets now (taken), and nothing waits or allocates.
        let n = NonZeroU32::new(units).expect("units > 0");
        let direct = self
            .direct
            .clone()
            .filter(|d| !matches!(d.check_n(n), Ok(Ok(()))));
        let keyed = self
            .keyed
            .clone()
            .zip((self.key)(&req))
            .filter(|(k, key)| !matches!(k.check_key_n(key, n), Ok(Ok(()))));
        if direct.is_none() && keyed.is_none() {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        if self.mode == Mode::DryRun {
            self.metrics.would_throttle.increment(u64::from(units));
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let metrics = self.metrics.clone();
        let clock = self.clock;
        let wait = Box::pin(async move {
            let started = tokio::time::Instant::now();
            if let Some(direct) = direct {
                take(units, |n| match direct.check_n(n) {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(not_until)) => Ok(Err(not_until.wait_time_from(clock.now()))),
                    Err(e) => Err(e.0),
                })
                .await;
            }
            if let Some((keyed, key)) = keyed {
                take(units, |n| match keyed.check_key_n(&key, n) {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(not_until)) => Ok(Err(not_until.wait_time_from(clock.now()))),
                    Err(e) => Err(e.0),
                })
                .await;
            }
            let waited = started.elapsed();
            if waited >= Duration::from_millis(1) {
                metrics.throttled.increment(u64::from(units));
                metrics.delay_seconds.record(waited.as_secs_f64());
            }
        });
        ResponseFuture::new(self.inner.call(req), Some(wait))
    }
}
