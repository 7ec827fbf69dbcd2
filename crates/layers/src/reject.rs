use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};

/// Why a layer refused a request.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The layer that refused (`"concurrency"`, `"rate"`).
    pub layer: &'static str,
    /// The rule's name, from configuration.
    pub rule: Arc<str>,
    /// When trying again may succeed, if the layer knows.
    pub retry_after: Option<Duration>,
}

/// Builds the response for a refused request (SMTP: a 4xx reply; HTTP: 429).
///
/// Closures `Fn(Req, Rejection) -> impl Future<Output = Result<T, E>>` implement it.
pub trait Reject<Req> {
    /// The response type (the wrapped service's).
    type Response;
    /// The error type (the wrapped service's).
    type Error;
    /// The future of the response.
    type Future: Future<Output = Result<Self::Response, Self::Error>>;

    /// The answer to `request`, refused for `rejection`.
    fn reject(&self, request: Req, rejection: Rejection) -> Self::Future;
}

impl<F, Req, Fut, T, E> Reject<Req> for F
where
    F: Fn(Req, Rejection) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = Fut;

    fn reject(&self, request: Req, rejection: Rejection) -> Fut {
        self(request, rejection)
    }
}

/// Enforce a limit, or only count what it would have refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Mode {
    /// Refuse over the limit.
    #[default]
    Enforce,
    /// Let everything through; count and log what would have been refused.
    DryRun,
}

/// Metric handles of one limit rule, passed in by the caller.
#[derive(Debug, Clone)]
pub struct LimitMetrics {
    /// Requests refused.
    pub rejected: Counter,
    /// Requests a dry-run rule would have refused.
    pub would_reject: Counter,
    /// Keys tracked right now.
    pub tracked_keys: Gauge,
    /// Key maps reset because they hit their size bound.
    pub resets: Counter,
}

impl LimitMetrics {
    /// Handles that record nothing.
    pub fn noop() -> Self {
        Self {
            rejected: Counter::noop(),
            would_reject: Counter::noop(),
            tracked_keys: Gauge::noop(),
            resets: Counter::noop(),
        }
    }

    /// Handles registered with the installed `metrics` recorder under
    /// `{prefix}_rejections_total`, `{prefix}_would_reject_total`, `{prefix}_tracked_keys` and
    /// `{prefix}_key_resets_total`, each labelled `layer`, `rule` and `key` (what the rule counts
    /// by: `client`, `sender`, ...).
    pub fn register(prefix: &str, layer: &'static str, rule: &str, key: &str) -> Self {
        let labels = [
            ("layer", layer.to_owned()),
            ("rule", rule.to_owned()),
            ("key", key.to_owned()),
        ];
        Self {
            rejected: metrics::counter!(format!("{prefix}_rejections_total"), &labels),
            would_reject: metrics::counter!(format!("{prefix}_would_reject_total"), &labels),
            tracked_keys: metrics::gauge!(format!("{prefix}_tracked_keys"), &labels),
            resets: metrics::counter!(format!("{prefix}_key_resets_total"), &labels),
        }
    }
}
