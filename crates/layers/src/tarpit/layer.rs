use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram};
use tower_layer::Layer;

use super::Tarpit;
use crate::Mode;

/// Metric handles of a tarpit.
#[derive(Debug, Clone)]
pub struct TarpitMetrics {
    /// Requests held.
    pub held: Counter,
    /// Delays imposed, in seconds.
    pub delay_seconds: Histogram,
    /// Requests held right now.
    pub holding: Gauge,
    /// Requests refused because the budget was used up.
    pub over_budget: Counter,
    /// Requests a dry-run tarpit would have held (it lets them through at once).
    pub would_hold: Counter,
}

impl TarpitMetrics {
    /// Handles that record nothing.
    pub fn noop() -> Self {
        Self {
            held: Counter::noop(),
            delay_seconds: Histogram::noop(),
            holding: Gauge::noop(),
            over_budget: Counter::noop(),
            would_hold: Counter::noop(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Budget {
    pub(super) mode: Mode,
    pub(super) max: usize,
    pub(super) held: AtomicUsize,
    pub(super) metrics: TarpitMetrics,
}

impl Budget {
    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<BudgetPermit> {
        let mut current = self.held.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
            }
            match self.held.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.metrics.holding.increment(1.0);
                    return Some(BudgetPermit(self.clone()));
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// One held request's share of the budget.
#[derive(Debug)]
pub(super) struct BudgetPermit(Arc<Budget>);

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.holding.decrement(1.0);
    }
}

/// Adds [`Tarpit`]. Clones share the budget.
#[derive(Debug, Clone)]
pub struct TarpitLayer<F, R> {
    pub(super) budget: Arc<Budget>,
    pub(super) delay: F,
    pub(super) reject: R,
}

impl<F, R> TarpitLayer<F, R> {
    /// `delay` says how long to hold a request (zero: not at all); at most `budget` requests are
    /// held at once, the others are refused with `reject`.
    pub fn new(budget: usize, delay: F, reject: R) -> Self {
        Self {
            budget: Arc::new(Budget {
                mode: Mode::Enforce,
                max: budget,
                held: AtomicUsize::new(0),
                metrics: TarpitMetrics::noop(),
            }),
            delay,
            reject,
        }
    }

    /// Sets the mode (before the layer is cloned or used): a dry run holds nothing and counts
    /// what it would have held.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        Arc::get_mut(&mut self.budget)
            .expect("configure the layer before cloning it")
            .mode = mode;
        self
    }

    /// Sets the metric handles (before the layer is cloned or used).
    #[must_use]
    pub fn metrics(mut self, metrics: TarpitMetrics) -> Self {
        Arc::get_mut(&mut self.budget)
            .expect("configure the layer before cloning it")
            .metrics = metrics;
        self
    }

    /// Requests held right now.
    pub fn holding(&self) -> usize {
        self.budget.held.load(Ordering::Relaxed)
    }
}

impl<S, F: Clone, R: Clone> Layer<S> for TarpitLayer<F, R> {
    type Service = Tarpit<S, F, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Tarpit::new(
            inner,
            self.budget.clone(),
            self.delay.clone(),
            self.reject.clone(),
        )
    }
}
