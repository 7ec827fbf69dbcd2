use std::sync::Arc;

use attitude_engines::milter::Milter;
use attitude_layers::Mode;
use metrics::Histogram;
use tower_layer::Layer;

use super::MilterService;
use crate::Decisions;
use crate::content::ByteBudget;

/// What a session does when a milter cannot be asked (down, too slow, not speaking the
/// protocol): Postfix's `milter_default_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum DefaultAction {
    /// Go on as if the milter were not there (for the rest of the session).
    Accept,
    /// Refuse the session's further MAIL, RCPT and messages with 451 4.7.1.
    #[default]
    Tempfail,
    /// Refuse them with 554 5.7.1.
    Reject,
}

/// What a milter's DISCARD means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Discard {
    /// `554 5.7.1`: attitude never says 250 to a message no backend took.
    #[default]
    Reject,
    /// Postfix's behaviour: 250, the message dropped (logged and counted as such).
    Accept,
}

/// One milter's metric handles.
#[derive(Debug, Clone)]
pub struct MilterMetrics {
    /// The milter's name: the `milter` label of `attitude_milter_calls_total{stage,result}`,
    /// `attitude_milter_failures_total{kind}` and `attitude_milter_modifications_total{kind}`.
    name: String,
    /// `attitude_milter_seconds{milter}`: a message's end-of-message exchange.
    pub seconds: Histogram,
}

impl MilterMetrics {
    /// The handles of milter `name`.
    pub fn register(name: &str) -> Self {
        // Failures are shown from zero (a dashboard's "none yet" is not "no data").
        for kind in ["connect", "timeout", "io", "protocol"] {
            metrics::counter!("attitude_milter_failures_total", "milter" => name.to_owned(), "kind" => kind)
                .increment(0);
        }
        Self {
            name: name.to_owned(),
            seconds: metrics::histogram!("attitude_milter_seconds", "milter" => name.to_owned()),
        }
    }

    /// Counts a stage's result.
    pub fn call(&self, stage: &'static str, result: &'static str) {
        metrics::counter!("attitude_milter_calls_total", "milter" => self.name.clone(), "stage" => stage, "result" => result)
            .increment(1);
    }

    /// Counts a failure of `kind` (connect, timeout, io, protocol).
    pub fn failure(&self, kind: &'static str) {
        metrics::counter!("attitude_milter_failures_total", "milter" => self.name.clone(), "kind" => kind)
            .increment(1);
    }

    /// Counts a change applied.
    pub fn modification(&self, kind: &'static str) {
        metrics::counter!("attitude_milter_modifications_total", "milter" => self.name.clone(), "kind" => kind)
            .increment(1);
    }
}

/// One configured milter.
#[derive(Debug, Clone)]
pub struct MilterPolicy {
    /// Its name (logs, metrics).
    pub name: String,
    /// Where it is and its time limits.
    pub milter: Milter,
    /// When it cannot be asked.
    pub default_action: DefaultAction,
    /// Its metrics.
    pub metrics: MilterMetrics,
}

/// The milters of one listener, in order, and what their answers mean.
pub struct MiltersConfig {
    /// Asked in this order; each sees the message as the previous ones changed it.
    pub milters: Vec<MilterPolicy>,
    /// Enforce or dry-run (dry-run: every milter is asked, nothing it says is applied).
    pub mode: Mode,
    /// What DISCARD means.
    pub discard: Discard,
    /// The reply code (451 or 554) of a message whose changed envelope did not pass relay
    /// control or the rates.
    pub envelope_code: u16,
    /// The `j` macro (attitude's host name).
    pub hostname: String,
    /// The `{daemon_name}` macro (the listener's name).
    pub daemon_name: String,
    /// Message copies held at once, shared with the content checks.
    pub budget: Arc<ByteBudget>,
    /// `policy="milter"` decisions.
    pub decisions: Decisions,
    /// A check stack that a changed envelope passes again (its MAIL and its added recipients):
    /// relay control and the rates, over a service that takes everything.
    pub recheck: Recheck,
}

/// Makes the stack a changed envelope passes again; see [`MiltersConfig::recheck`].
pub type Recheck = Arc<dyn Fn() -> attitude_service::BoxCommand + Send + Sync>;

impl std::fmt::Debug for MiltersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiltersConfig")
            .field("milters", &self.milters)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Adds [`MilterService`].
#[derive(Debug, Clone)]
pub struct MilterLayer {
    config: Arc<MiltersConfig>,
}

impl MilterLayer {
    /// A layer asking `config`'s milters.
    pub fn new(config: MiltersConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for MilterLayer {
    type Service = MilterService<S>;

    fn layer(&self, inner: S) -> MilterService<S> {
        MilterService::new(inner, self.config.clone())
    }
}
