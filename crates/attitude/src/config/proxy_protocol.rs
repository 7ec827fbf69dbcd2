//! `[proxy_protocol]`: PROXY headers in, from a load balancer.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[proxy_protocol]`: a PROXY header (v1 or v2) before the session, from a load balancer in
/// `sources`, carries the real client address every policy, log line and metric then uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ProxyProtocol {
    /// Require a PROXY header on every connection.
    pub enabled: bool,
    /// Where the load balancer connects from: the only peers whose header is believed (others
    /// are closed); also checked against `[relay] trusted_networks` (see `validate`).
    pub sources: Vec<IpNet>,
    /// How long the header may take.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            enabled: false,
            sources: Vec::new(),
            header_timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyProtocol {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.sources.is_empty() {
            return Err(ConfigError::Invalid(
                "[proxy_protocol] enabled with no sources: set sources to the networks your load \
                 balancer connects from"
                    .into(),
            ));
        }
        Ok(())
    }
}
