//! `[dnsbl]`: DNSBL/DNSWL scoring at connect.

use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[dnsbl]`: DNSBL/DNSWL scoring at connect, postscreen style.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsblSection {
    /// Score clients at all.
    pub enabled: bool,
    /// `zone[=answer filter][*weight]`, e.g. `"zen.spamhaus.org=127.0.0.[2..11]*3"`.
    pub zones: Vec<String>,
    /// Refused (554 5.7.1) at or over this score.
    pub threshold: i32,
    /// Exempt from greylisting at or under this score (DNSWL).
    pub allowlist_threshold: i32,
    /// How long a score is reused.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Most scores cached.
    pub max_cache: usize,
    /// Enforce or dry-run.
    pub mode: Mode,
}

impl Default for DnsblSection {
    fn default() -> Self {
        Self {
            enabled: false,
            zones: Vec::new(),
            threshold: 1,
            allowlist_threshold: -1,
            cache_ttl: Duration::from_secs(600),
            max_cache: 100_000,
            mode: Mode::Enforce,
        }
    }
}

impl DnsblSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled {
            return Ok(());
        }
        if self.zones.is_empty() {
            return invalid(
                "[dnsbl] enabled with no zones: list them, e.g. zones = \
                 [\"zen.spamhaus.org=127.0.0.[2..11]*3\"]"
                    .into(),
            );
        }
        for zone in &self.zones {
            attitude_policy::dnsbl::Zone::parse(zone)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.allowlist_threshold >= self.threshold {
            return invalid("[dnsbl] allowlist_threshold must be below threshold".into());
        }
        Ok(())
    }
}
