use std::sync::Arc;

use metrics::{Counter, Histogram};
use tower_layer::Layer;

use super::SmtpMetricsService;

/// Verbs with their own label; anything else counts as `OTHER`.
pub(super) const VERBS: [&str; 17] = [
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS", "AUTH", "INVALID", "DATA_END", "OTHER",
];
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Metric handles of the SMTP command stack.
#[derive(Debug)]
pub struct SmtpMetrics {
    commands: Vec<[Counter; 4]>,
    /// `attitude_messages_total{outcome="accepted"}`
    pub accepted: Counter,
    /// `attitude_messages_total{outcome="rejected"}`
    pub rejected: Counter,
    /// `attitude_messages_total{outcome="deferred"}`
    pub deferred: Counter,
    /// `attitude_transaction_duration_seconds`: MAIL accepted to end-of-data reply.
    pub transaction_seconds: Histogram,
}

impl SmtpMetrics {
    /// Registers the handles with the installed `metrics` recorder.
    pub fn register() -> Arc<Self> {
        let commands = VERBS
            .iter()
            .map(|verb| {
                CLASSES.map(|class| {
                    metrics::counter!("attitude_commands_total", "verb" => *verb, "class" => class)
                })
            })
            .collect();
        let outcome =
            |o: &'static str| metrics::counter!("attitude_messages_total", "outcome" => o);
        Arc::new(Self {
            commands,
            accepted: outcome("accepted"),
            rejected: outcome("rejected"),
            deferred: outcome("deferred"),
            transaction_seconds: metrics::histogram!("attitude_transaction_duration_seconds"),
        })
    }

    pub(super) fn command(&self, verb: &str, class: u8) {
        let row = VERBS
            .iter()
            .position(|v| *v == verb)
            .unwrap_or(VERBS.len() - 1);
        if let Some(counter) = (class as usize)
            .checked_sub(2)
            .and_then(|i| self.commands[row].get(i))
        {
            counter.increment(1);
        }
    }
}

/// Adds [`SmtpMetricsService`].
#[derive(Debug, Clone)]
pub struct SmtpMetricsLayer {
    metrics: Arc<SmtpMetrics>,
}

impl SmtpMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<SmtpMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for SmtpMetricsLayer {
    type Service = SmtpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SmtpMetricsService::new(inner, self.metrics.clone())
    }
}
