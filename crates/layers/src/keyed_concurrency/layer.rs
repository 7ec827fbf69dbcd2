use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tower_layer::Layer;

use super::KeyedConcurrency;
use crate::{LimitMetrics, Mode};

/// Adds [`KeyedConcurrency`]. Clones share their counts: one layer, one limit.
#[derive(Debug, Clone)]
pub struct KeyedConcurrencyLayer<K, F, R> {
    pub(super) shared: Arc<Shared<K>>,
    pub(super) key: F,
    pub(super) reject: R,
}

#[derive(Debug)]
pub(super) struct Shared<K> {
    pub(super) name: Arc<str>,
    pub(super) limit: usize,
    pub(super) mode: Mode,
    pub(super) in_flight: Mutex<HashMap<K, usize>>,
    pub(super) metrics: LimitMetrics,
}

impl<K, F, R> KeyedConcurrencyLayer<K, F, R>
where
    K: Hash + Eq + Clone,
{
    /// At most `limit` in flight per key; `key` extracts the key (`None`: exempt), `reject`
    /// answers a refused request. `name` names the rule in rejections and logs.
    pub fn new(name: &str, limit: usize, key: F, reject: R) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                limit,
                mode: Mode::Enforce,
                in_flight: Mutex::new(HashMap::new()),
                metrics: LimitMetrics::noop(),
            }),
            key,
            reject,
        }
    }

    /// Sets the mode (before the layer is cloned or used).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.shared_mut().mode = mode;
        self
    }

    /// Sets the metric handles (before the layer is cloned or used).
    #[must_use]
    pub fn metrics(mut self, metrics: LimitMetrics) -> Self {
        self.shared_mut().metrics = metrics;
        self
    }

    fn shared_mut(&mut self) -> &mut Shared<K> {
        Arc::get_mut(&mut self.shared).expect("configure the layer before cloning it")
    }

    /// Requests in flight for `key`.
    pub fn in_flight(&self, key: &K) -> usize {
        let map = self.shared.in_flight.lock().expect("lock");
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
            self.shared.clone(),
            self.key.clone(),
            self.reject.clone(),
        )
    }
}
