//! `[[rates]]`: message and recipient rate rules.

use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// What a rate rule counts by.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RateKey {
    /// The client's network (`connections.client_prefix_v4`/`_v6`; exempt networks skip).
    Client,
    /// The MAIL FROM address (the null sender counts as `<>`).
    Sender,
    /// The MAIL FROM domain (the null sender counts as `<>`, a sender without a domain as
    /// `<no-domain>`).
    SenderDomain,
    /// The authenticated user (clients that did not authenticate are not counted).
    AuthUser,
    /// The recipient's domain (only with `count = "recipients"`).
    RcptDomain,
}

/// What a rate rule counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RateCount {
    /// Messages, counted at MAIL.
    Messages,
    /// Recipients, counted at RCPT.
    Recipients,
}

/// One `[[rates]]` rule: at most `limit` per `per` (GCRA), bursts up to `burst`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateRule {
    /// Name in replies, logs and metrics.
    pub name: String,
    /// What it counts by.
    pub key: RateKey,
    /// What it counts.
    pub count: RateCount,
    /// How many per `per`.
    pub limit: u32,
    /// The period, e.g. `"1h"`.
    #[serde(with = "duration")]
    pub per: Duration,
    /// Allowed in a burst (default: `limit`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// `"enforce"` or `"dry-run"`.
    #[serde(default)]
    pub mode: Mode,
    /// Reply code over the rate: 450 (default) or 451.
    #[serde(default = "default_rate_code")]
    pub code: u16,
    /// Most keys tracked before the rule starts over.
    #[serde(default = "default_rate_keys")]
    pub max_keys: usize,
}

fn default_rate_code() -> u16 {
    450
}

fn default_rate_keys() -> usize {
    100_000
}

/// Names unique, limits above zero, codes 450 or 451.
pub(super) fn validate(rules: &[RateRule]) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let mut names = std::collections::HashSet::new();
    for rule in rules {
        let name = &rule.name;
        if name.is_empty() || !names.insert(name.as_str()) {
            return invalid(format!(
                "[[rates]] name {name:?} must be non-empty and unique"
            ));
        }
        if rule.limit == 0 || rule.per.is_zero() || rule.burst == Some(0) {
            return invalid(format!(
                "[[rates]] {name}: limit, per and burst must be greater than 0"
            ));
        }
        if rule.code != 450 && rule.code != 451 {
            return invalid(format!("[[rates]] {name}: code must be 450 or 451"));
        }
        if rule.key == RateKey::RcptDomain && rule.count != RateCount::Recipients {
            return invalid(format!(
                "[[rates]] {name}: key = \"rcpt-domain\" needs count = \"recipients\""
            ));
        }
    }
    Ok(())
}
