use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tower_layer::Layer;

use super::KeyedConcurrency;
use super::lease::{LeaseTerms, Leases};
use crate::fleet::Fleet;
use crate::{LimitMetrics, Mode};

/// Adds [`KeyedConcurrency`]. Clones share their counts: one layer, one limit; layers built
/// over one [`KeyedConcurrencyState`] share the counts, each with its own limit and mode.
#[derive(Debug, Clone)]
pub struct KeyedConcurrencyLayer<K, F, R> {
    pub(super) rule: Arc<Rule<K>>,
    pub(super) key: F,
    pub(super) reject: R,
}

/// What a concurrency limit counts (requests in flight per key), apart from how it is used:
/// build layers over it with [`KeyedConcurrencyLayer::with_state`] to share the counts.
#[derive(Debug)]
pub struct KeyedConcurrencyState<K> {
    pub(super) shared: Arc<Shared<K>>,
}

impl<K> Clone for KeyedConcurrencyState<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> KeyedConcurrencyState<K> {
    /// Counts across the fleet too: each admitted request holds a lease in the shared store
    /// (see [`LeaseTerms`]); while the store is away, the limit holds per process. Call before
    /// the state is cloned.
    #[must_use]
    pub fn fleet(mut self, fleet: Fleet<K>, terms: LeaseTerms) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("give the counts their fleet before sharing them")
            .leases = Some(Arc::new(Leases::new(fleet, terms)));
        self
    }
}

impl<K: Hash + Eq + Clone> KeyedConcurrencyState<K> {
    /// Fresh counts for the rule `name`.
    pub fn new(name: &str, metrics: LimitMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                in_flight: Mutex::new(HashMap::new()),
                metrics,
                leases: None,
            }),
        }
    }

    /// Requests in flight for `key`.
    pub fn in_flight(&self, key: &K) -> usize {
        let map = self.shared.in_flight.lock().expect("lock");
        map.get(key).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
pub(super) struct Shared<K> {
    pub(super) name: Arc<str>,
    pub(super) in_flight: Mutex<HashMap<K, usize>>,
    pub(super) metrics: LimitMetrics,
    /// The fleet's leases, when the counts are shared.
    pub(super) leases: Option<Arc<Leases<K>>>,
}

/// A layer's use of the counts: its limit and mode (one allocation shared by its services).
#[derive(Debug)]
pub(super) struct Rule<K> {
    pub(super) state: Arc<Shared<K>>,
    pub(super) limit: usize,
    pub(super) mode: Mode,
}

impl<K, F, R> KeyedConcurrencyLayer<K, F, R>
where
    K: Hash + Eq + Clone,
{
    /// At most `limit` in flight per key; `key` extracts the key (`None`: exempt), `reject`
    /// answers a refused request. `name` names the rule in rejections and logs.
    pub fn new(name: &str, limit: usize, key: F, reject: R) -> Self {
        Self::with_state(
            KeyedConcurrencyState::new(name, LimitMetrics::noop()),
            limit,
            key,
            reject,
        )
    }

    /// At most `limit` in flight per key, counted in `state` (which other layers may share).
    pub fn with_state(state: KeyedConcurrencyState<K>, limit: usize, key: F, reject: R) -> Self {
        Self {
            rule: Arc::new(Rule {
                state: state.shared,
                limit,
                mode: Mode::Enforce,
            }),
            key,
            reject,
        }
    }

    /// Sets the mode (before the layer is cloned or used).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.rule_mut().mode = mode;
        self
    }

    /// Sets the metric handles (before the layer is cloned or used, on counts of its own).
    #[must_use]
    pub fn metrics(mut self, metrics: LimitMetrics) -> Self {
        Arc::get_mut(&mut self.rule_mut().state)
            .expect("give shared counts their metrics when making them")
            .metrics = metrics;
        self
    }

    fn rule_mut(&mut self) -> &mut Rule<K> {
        Arc::get_mut(&mut self.rule).expect("configure the layer before cloning it")
    }

    /// Requests in flight for `key`.
    pub fn in_flight(&self, key: &K) -> usize {
        let map = self.rule.state.in_flight.lock().expect("lock");
        map.get(key).copied().unwrap_or(0)
    }
}

impl<S, K, F, R> Layer<S> for KeyedConcurrencyLayer<K, F, R>
where
    F: Clone,
    R: Clone,
{
    type Service = KeyedConcurrency<S, K, F, R>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedConcurrency::new(
            inner,
            self.rule.clone(),
            self.key.clone(),
            self.reject.clone(),
        )
    }
}
