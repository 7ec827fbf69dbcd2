use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::gcra::Gcra;
use tower_layer::Layer;

use super::RateLimit;
use crate::fleet::Fleet;
use crate::{LimitMetrics, Mode};

/// Governor's keyed GCRA limiter (the throttle's; [`RateLimitLayer`] has its own, whose quota
/// can change).
pub type KeyedLimiter<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How often (in requests) the tracked-key bound is checked.
const CHECK_EVERY: u64 = 1024;

/// Adds [`RateLimit`]. Clones share their state: one layer, one limit; layers built over one
/// [`RateLimitState`] share it too (a rule kept across reloads, or named by two listeners).
#[derive(Clone)]
pub struct RateLimitLayer<K: Hash + Eq + Clone, F, R, C: Clock = DefaultClock> {
    pub(super) shared: Arc<Shared<K, C>>,
    pub(super) mode: Mode,
    pub(super) key: F,
    pub(super) reject: R,
}

/// What a rate limit remembers (its keyed GCRA state), apart from how it is used (the key, the
/// mode, the reply): build layers over it with [`RateLimitLayer::with_state`] to share it.
pub struct RateLimitState<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    pub(super) shared: Arc<Shared<K, C>>,
}

impl<K: Hash + Eq + Clone, C: Clock> Clone for RateLimitState<K, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, C: Clock> std::fmt::Debug for RateLimitState<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitState")
            .field("rule", &self.shared.name)
            .field("max_keys", &self.shared.max_keys.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> RateLimitState<K, DefaultClock> {
    /// Fresh state for the rule `name`: `quota` per key, about `max_keys` keys at most.
    pub fn new(name: &str, quota: Quota, max_keys: usize, metrics: LimitMetrics) -> Self {
        Self::with_clock(name, quota, max_keys, metrics, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> RateLimitState<K, C> {
    /// As [`RateLimitState::new`], on another clock.
    pub fn with_clock(
        name: &str,
        quota: Quota,
        max_keys: usize,
        metrics: LimitMetrics,
        clock: C,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                quota: Mutex::new(quota),
                gcra: Gcra::new(quota, clock),
                max_keys: AtomicUsize::new(max_keys.max(1)),
                calls: AtomicU64::new(0),
                metrics,
                fleet: None,
                local: Mutex::default(),
            }),
        }
    }

    /// Keeps the buckets in a store the fleet shares (its GCRA decides; this process's own
    /// buckets decide while the store is away). Call before the state is cloned.
    #[must_use]
    pub fn fleet(mut self, fleet: Fleet<K>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("give the state its fleet before sharing it")
            .fleet = Some(fleet);
        self
    }

    /// The quota it enforces.
    pub fn quota(&self) -> Quota {
        *self.shared.quota.lock().expect("quota lock")
    }

    /// Enforces `quota` from now on, on what every key has used so far (a reload that changes
    /// the rate keeps the counts).
    pub fn set_quota(&self, quota: Quota) {
        *self.shared.quota.lock().expect("quota lock") = quota;
        self.shared.gcra.set_quota(quota);
    }

    /// The key bound.
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys.load(Ordering::Relaxed)
    }

    /// Bounds the keys tracked at about `max_keys` from now on.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.shared
            .max_keys
            .store(max_keys.max(1), Ordering::Relaxed);
    }

    /// Forgets keys back at full burst and enforces the key bound (see
    /// [`RateLimitLayer::housekeeping`]).
    pub fn housekeeping(&self) {
        self.shared.housekeeping(true);
    }
}

pub(super) struct Shared<K: Hash + Eq + Clone, C: Clock> {
    pub(super) name: Arc<str>,
    quota: Mutex<Quota>,
    pub(super) gcra: Gcra<K, C>,
    max_keys: AtomicUsize,
    calls: AtomicU64,
    pub(super) metrics: LimitMetrics,
    /// The shared store, when the rule's state is the fleet's.
    pub(super) fleet: Option<Fleet<K>>,
    /// What this process knows of a fleet rule's keys without asking the store.
    local: Mutex<HashMap<K, Known>>,
}

/// A fleet rule's key, as this process knows it between round trips.
#[derive(Debug, Clone, Copy)]
enum Known {
    /// The store refused it until then (the limiter's nanoseconds): refused again from here
    /// without a round trip until its next cell is due.
    RefusedUntil(u64),
    /// Cells the store granted in a batch and not spent yet.
    Spare(u32),
}

/// What a fleet rule decides without the store.
pub(super) enum Local {
    /// A spare cell was spent: allowed.
    Spent,
    /// Still refused, for this long.
    Refused(Duration),
    /// Ask the store.
    Ask,
}

impl<K, F, R> RateLimitLayer<K, F, R, DefaultClock>
where
    K: Hash + Eq + Clone,
{
    /// `quota` per key (e.g. `Quota::per_minute(30).allow_burst(10)`), at most about `max_keys`
    /// keys tracked; `key` extracts the key (`None`: exempt), `reject` answers a refused request.
    pub fn new(name: &str, quota: Quota, max_keys: usize, key: F, reject: R) -> Self {
        Self::with_clock(name, quota, max_keys, key, reject, DefaultClock::default())
    }
}

impl<K, F, R, C> RateLimitLayer<K, F, R, C>
where
    K: Hash + Eq + Clone,
    C: Clock + Clone,
{
    /// Like [`RateLimitLayer::new`] with another clock (a fake one in tests).
    pub fn with_clock(
        name: &str,
        quota: Quota,
        max_keys: usize,
        key: F,
        reject: R,
        clock: C,
    ) -> Self {
        let state = RateLimitState::with_clock(name, quota, max_keys, LimitMetrics::noop(), clock);
        Self::with_state(state, key, reject)
    }

    /// A layer over `state` (kept by the caller, shared with other layers over it).
    pub fn with_state(state: RateLimitState<K, C>, key: F, reject: R) -> Self {
        Self {
            shared: state.shared,
            mode: Mode::Enforce,
            key,
            reject,
        }
    }

    /// Sets the mode.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the metric handles (before the layer is cloned or used).
    #[must_use]
    pub fn metrics(mut self, metrics: LimitMetrics) -> Self {
        self.shared_mut().metrics = metrics;
        self
    }

    fn shared_mut(&mut self) -> &mut Shared<K, C> {
        Arc::get_mut(&mut self.shared)
            .expect("configure the layer before cloning it (or give the state its metrics)")
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.shared.gcra.len()
    }

    /// Forgets keys that are back at full burst and enforces the key bound; call it on a
    /// timer (the layer also does it every 1024 requests when over the bound).
    pub fn housekeeping(&self) {
        self.shared.housekeeping(true);
    }
}

impl<K: Hash + Eq + Clone, F, R, C: Clock> std::fmt::Debug for RateLimitLayer<K, F, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("rule", &self.shared.name)
            .field("mode", &self.mode)
            .field("max_keys", &self.shared.max_keys.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K, C> Shared<K, C>
where
    K: Hash + Eq + Clone,
    C: Clock + Clone,
{
    /// A fleet rule's verdict on `key` from what this process knows (one lock, one lookup).
    pub(super) fn local(&self, key: &K) -> Local {
        let mut local = self.local.lock().expect("fleet keys lock");
        match local.get_mut(key) {
            None => Local::Ask,
            Some(Known::Spare(n)) if *n > 1 => {
                *n -= 1;
                Local::Spent
            }
            Some(Known::Spare(_)) => {
                local.remove(key);
                Local::Spent
            }
            Some(Known::RefusedUntil(until)) => {
                let now = self.gcra.now();
                if *until > now {
                    Local::Refused(Duration::from_nanos(*until - now))
                } else {
                    local.remove(key);
                    Local::Ask
                }
            }
        }
    }

    /// The store granted `cells` for `key` (one is spent now) or refused it for `wait`. Spare
    /// cells add up (requests that asked at the same time each got a batch), up to four
    /// batches; more are dropped, which only admits less.
    pub(super) fn learn(&self, key: K, granted: Result<u32, Duration>, batch: u32) {
        let known = match granted {
            Ok(cells) if cells > 1 => {
                let mut local = self.local.lock().expect("fleet keys lock");
                if let Some(Known::Spare(n)) = local.get_mut(&key) {
                    *n = (*n + cells - 1).min(batch.saturating_mul(4));
                    return;
                }
                drop(local);
                Known::Spare(cells - 1)
            }
            Ok(_) => return,
            Err(wait) => Known::RefusedUntil(
                self.gcra
                    .now()
                    .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
            ),
        };
        let mut local = self.local.lock().expect("fleet keys lock");
        if local.len() >= self.max_keys.load(Ordering::Relaxed) {
            // Over the key bound: forget (spare cells forgotten only admit less).
            let now = self.gcra.now();
            local.retain(|_, k| matches!(k, Known::RefusedUntil(until) if *until > now));
            if local.len() >= self.max_keys.load(Ordering::Relaxed) {
                local.clear();
            }
        }
        local.insert(key, known);
    }

    pub(super) fn tick(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1 {
            self.housekeeping(false);
        }
    }

    fn housekeeping(&self, always_retain: bool) {
        let max_keys = self.max_keys.load(Ordering::Relaxed);
        let mut len = self.gcra.len();
        if always_retain || len > max_keys {
            self.gcra.retain_recent();
            len = self.gcra.len();
            let now = self.gcra.now();
            self.local
                .lock()
                .expect("fleet keys lock")
                .retain(|_, k| !matches!(k, Known::RefusedUntil(until) if *until <= now));
        }
        if len > max_keys {
            self.gcra.clear();
            self.metrics.resets.increment(1);
            tracing::warn!(rule = %self.name, keys = len, max = max_keys, "rate limit: too many keys tracked; starting over");
            len = 0;
        }
        self.metrics.tracked_keys.set(len as f64);
    }
}

impl<S, K, F, R, C> Layer<S> for RateLimitLayer<K, F, R, C>
where
    K: Hash + Eq + Clone,
    F: Clone,
    R: Clone,
    C: Clock,
{
    type Service = RateLimit<S, K, F, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            self.shared.clone(),
            self.mode,
            self.key.clone(),
            self.reject.clone(),
        )
    }
}
