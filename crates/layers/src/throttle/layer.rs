use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use metrics::{Counter, Histogram};

use crate::Mode;
use tower_layer::Layer;

use super::Throttle;
use crate::TokioClock;
use crate::rate_limit::KeyedLimiter;

pub(super) type DirectLimiter =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Metric handles of a throttle.
#[derive(Debug, Clone)]
pub struct ThrottleMetrics {
    /// Units (bytes) that had to wait.
    pub throttled: Counter,
    /// Delays imposed, in seconds.
    pub delay_seconds: Histogram,
    /// Units (bytes) a dry-run throttle would have held (it lets them through at once).
    pub would_throttle: Counter,
}

impl ThrottleMetrics {
    /// Handles that record nothing.
    pub fn noop() -> Self {
        Self {
            throttled: Counter::noop(),
            delay_seconds: Histogram::noop(),
            would_throttle: Counter::noop(),
        }
    }
}

/// Adds [`Throttle`]: each service made by this layer gets its own `per_instance` budget; all
/// share the keyed one.
#[derive(Clone)]
pub struct ThrottleLayer<K: Hash + Eq + Clone, F, G> {
    pub(super) per_instance: Option<Quota>,
    pub(super) keyed: Option<Arc<KeyedLimiter<K, TokioClock>>>,
    pub(super) key: F,
    pub(super) cost: G,
    pub(super) metrics: ThrottleMetrics,
    /// Enforce, or dry-run: nothing waits, what would have is counted.
    pub(super) mode: Mode,
    /// Tokio's time (a paused clock moves it too).
    pub(super) clock: TokioClock,
}

impl<K: Hash + Eq + Clone, F, G> std::fmt::Debug for ThrottleLayer<K, F, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("per_instance", &self.per_instance)
            .field("keyed", &self.keyed.is_some())
            .finish_non_exhaustive()
    }
}

/// `units_per_second` with a burst of `burst` units, or `None` when 0 (off).
pub(super) fn quota(units_per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(units_per_second)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1))?))
}

impl<K: Hash + Eq + Clone, F, G> ThrottleLayer<K, F, G> {
    /// `per_instance` and `per_key` are units (bytes) per second, 0 for off, each with a burst of
    /// `burst` units; `key` extracts the key (`None`: no keyed throttle), `cost` what a request
    /// costs (0: free).
    pub fn new(per_instance: u32, per_key: u32, burst: u32, key: F, cost: G) -> Self {
        let clock = TokioClock;
        Self {
            per_instance: quota(per_instance, burst),
            keyed: quota(per_key, burst)
                .map(|q| Arc::new(RateLimiter::new(q, Default::default(), clock))),
            key,
            cost,
            metrics: ThrottleMetrics::noop(),
            mode: Mode::Enforce,
            clock,
        }
    }

    /// Sets the mode.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the metric handles.
    #[must_use]
    pub fn metrics(mut self, metrics: ThrottleMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Forgets keys back at full budget (call on a timer).
    pub fn housekeeping(&self) {
        if let Some(keyed) = &self.keyed {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
    }
}

impl<S, K: Hash + Eq + Clone, F: Clone, G: Clone> Layer<S> for ThrottleLayer<K, F, G> {
    type Service = Throttle<S, K, F, G>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle::new(
            inner,
            self.per_instance
                .map(|q| Arc::new(RateLimiter::direct_with_clock(q, self.clock))),
            self,
        )
    }
}
