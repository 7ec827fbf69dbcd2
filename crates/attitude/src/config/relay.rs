//! `[relay]`: who may relay where.

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[relay]`: a recipient is accepted when its domain is local, the client is trusted or has
/// authenticated; anything else is `554 5.7.1 Relay access denied`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Relay {
    /// Domains attitude accepts mail for from anyone; `.example.com` also matches subdomains.
    pub local_domains: Vec<String>,
    /// Clients that may relay anywhere (your own applications and submission hosts).
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Accept `user%remote@local`, `remote!user@local` and `"user@remote"@local` from clients
    /// that may not relay (off: they get 554 5.7.1, as Postfix's `allow_untrusted_routing = no`).
    pub allow_routing: bool,
    /// `"enforce"` or `"dry-run"`.
    pub mode: Mode,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            local_domains: Vec::new(),
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            allow_routing: false,
            mode: Mode::Enforce,
        }
    }
}

impl Relay {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for domain in &self.local_domains {
            let name = domain.strip_prefix('.').unwrap_or(domain);
            if name.is_empty() || name.contains(['@', ' ', '*']) {
                return Err(ConfigError::Invalid(format!(
                    "[relay] local_domains entry {domain:?}: write a domain (\"example.com\") or \
                     \".example.com\" for its subdomains"
                )));
            }
        }
        Ok(())
    }
}
