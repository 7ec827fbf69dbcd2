use std::sync::Arc;

use attitude_engines::clamav::Clamd;
use attitude_engines::rspamd::Rspamd;
use attitude_layers::Mode;
use attitude_layers::slot::Slot;
use ipnet::IpNet;
use metrics::{Counter, Histogram};
use tower_layer::Layer;

use super::Scan;
use crate::Decisions;
use crate::content::ByteBudget;

/// What to do when a scan gives no verdict, or cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Fallback {
    /// Let the message through unscanned (counted).
    Accept,
    /// `451`: the client tries again later.
    Tempfail,
}

/// `[clamav]` as the policy runs it.
#[derive(Debug)]
pub struct ClamavPolicy {
    /// The daemons.
    pub clamd: Clamd,
    /// Largest message scanned (octets); a larger one takes `on_oversize`.
    pub max_size: u64,
    /// A message over `max_size` or clamd's `StreamMaxLength`.
    pub on_oversize: Fallback,
    /// clamd unreachable, slow or confused.
    pub on_error: Fallback,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// `policy="clamav"` decisions.
    pub decisions: Decisions,
}

/// `[rspamd]` as the policy runs it.
#[derive(Debug)]
pub struct RspamdPolicy {
    /// The worker.
    pub rspamd: Rspamd,
    /// Largest message scanned (octets); larger ones pass unscanned (counted).
    pub max_size: u64,
    /// rspamd unreachable, slow or confused.
    pub on_error: Fallback,
    /// Whether rspamd may change headers (the message is then held until the verdict).
    pub headers: bool,
    /// Sent as `Settings-ID`.
    pub settings_id: Option<String>,
    /// Authenticated sessions are not scanned.
    pub skip_authenticated: bool,
    /// Sessions from `trusted` networks are not scanned.
    pub skip_trusted: bool,
    /// Fields added for `add header` and `quarantine` (`X-Spam: Yes`).
    pub spam_headers: Vec<(String, String)>,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// `policy="rspamd"` decisions.
    pub decisions: Decisions,
}

/// Counters and histograms of the scans.
#[derive(Debug, Clone)]
pub struct ScanMetrics {
    /// `attitude_scan_seconds{engine="clamav"}`: from end of data to the verdict.
    pub clamav_seconds: Histogram,
    /// `attitude_scan_seconds{engine="rspamd"}`.
    pub rspamd_seconds: Histogram,
    /// `attitude_scan_bytes_total{engine="clamav"}`.
    pub clamav_bytes: Counter,
    /// `attitude_scan_bytes_total{engine="rspamd"}`.
    pub rspamd_bytes: Counter,
    /// Messages held until the verdict that would not fit the byte budget.
    pub over_budget: Counter,
}

impl ScanMetrics {
    /// Registers the handles.
    pub fn register() -> Self {
        Self {
            clamav_seconds: metrics::histogram!("attitude_scan_seconds", "engine" => "clamav"),
            rspamd_seconds: metrics::histogram!("attitude_scan_seconds", "engine" => "rspamd"),
            clamav_bytes: metrics::counter!("attitude_scan_bytes_total", "engine" => "clamav"),
            rspamd_bytes: metrics::counter!("attitude_scan_bytes_total", "engine" => "rspamd"),
            over_budget: metrics::counter!("attitude_content_over_budget_total"),
        }
    }

    /// `attitude_scans_total{engine, result}` (results are a fixed set of labels).
    pub fn result(engine: &'static str, result: &'static str) {
        metrics::counter!("attitude_scans_total", "engine" => engine, "result" => result)
            .increment(1);
    }
}

/// What the scan policy runs, and with what.
#[derive(Debug)]
pub struct ScanConfig {
    /// ClamAV, when on.
    pub clamav: Option<ClamavPolicy>,
    /// rspamd, when on.
    pub rspamd: Option<RspamdPolicy>,
    /// Message copies held at once, shared with the content policies.
    pub budget: Arc<ByteBudget>,
    /// Over the budget: skip rspamd for the message (`Accept`) or defer it (`Tempfail`).
    pub on_over_budget: Fallback,
    /// The trusted networks (`skip_trusted`).
    pub trusted: Vec<IpNet>,
    /// Metric handles.
    pub metrics: ScanMetrics,
}

/// Adds [`Scan`].
#[derive(Debug, Clone)]
pub struct ScanLayer {
    config: Arc<ScanConfig>,
}

impl ScanLayer {
    /// A layer with this configuration.
    pub fn new(config: ScanConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for ScanLayer {
    type Service = Scan<S>;

    fn layer(&self, inner: S) -> Scan<S> {
        Scan::new(Slot::new(inner, true), self.config.clone())
    }
}
