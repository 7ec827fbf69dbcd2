use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use attitude_layers::Mode;
use metrics::{Counter, Gauge};
use tower_layer::Layer;

use super::{AttachmentRules, Content, HeaderCheck};
use crate::Decisions;

/// Octets of message copies held at once, across every session.
#[derive(Debug)]
pub struct ByteBudget {
    max: usize,
    used: AtomicUsize,
    gauge: Gauge,
}

impl ByteBudget {
    /// A budget of `max` octets, reported in `gauge`.
    pub fn new(max: usize, gauge: Gauge) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Takes `n` octets if they are free.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut current = self.used.load(Ordering::Relaxed);
        loop {
            if current + n > self.max {
                return false;
            }
            match self.used.compare_exchange_weak(
                current,
                current + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.gauge.increment(n as f64);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives `n` octets back.
    pub fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }
}

/// What the content policies check, and with what.
#[derive(Debug)]
pub struct ContentConfig {
    /// Header checks, first match wins (empty: off).
    pub header_checks: Vec<HeaderCheck>,
    /// Attachment names refused (`None`: off).
    pub attachments: Option<AttachmentRules>,
    /// Largest message copy (the message size limit).
    pub max_message: usize,
    /// Shared by every session.
    pub budget: Arc<ByteBudget>,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// `policy="header"` decisions.
    pub header_decisions: Decisions,
    /// `policy="attachment"` decisions.
    pub attachment_decisions: Decisions,
    /// Messages deferred because the budget was used up.
    pub over_budget: Counter,
}

impl ContentConfig {
    /// True when some content policy needs a copy of the message.
    pub fn active(&self) -> bool {
        self.attachments.is_some() || !self.header_checks.is_empty()
    }
}

/// Adds [`Content`].
#[derive(Debug, Clone)]
pub struct ContentLayer {
    config: Arc<ContentConfig>,
}

impl ContentLayer {
    /// A layer with this configuration.
    pub fn new(config: ContentConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for ContentLayer {
    type Service = Content<S>;

    fn layer(&self, inner: S) -> Content<S> {
        Content::new(inner, self.config.clone())
    }
}
