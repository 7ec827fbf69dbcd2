//! `[connections]`: the global session cap, sessions and connection rate per client.

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[connections]`: what one client, and all of them, may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Connections {
    /// Sessions open at once, all clients together; over it new clients get `421 4.3.2` at once.
    pub max_sessions: usize,
    /// `"enforce"`, or `"dry-run"`: over `max_sessions` is only counted
    /// (`attitude_limit_would_reject_total{rule="max_sessions"}`), to size the cap first.
    pub max_sessions_mode: Mode,
    /// Clients are counted per network of this many bits (IPv4).
    pub client_prefix_v4: u8,
    /// Clients are counted per network of this many bits (IPv6; a /64 is one subscriber).
    pub client_prefix_v6: u8,
    /// Networks exempt from the per-client rules (not from `max_sessions`); default loopback.
    pub exempt_networks: Vec<ipnet::IpNet>,
    /// Most client keys tracked by the rate rule before it starts over.
    pub max_tracked_clients: usize,
    /// Sessions at once per client.
    pub per_client: PerClientLimit,
    /// New sessions per client over time.
    pub rate: ConnectionRate,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            max_sessions_mode: Mode::Enforce,
            client_prefix_v4: 32,
            client_prefix_v6: 64,
            // Like Postfix's anvil, which exempts $mynetworks (loopback by default).
            exempt_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            max_tracked_clients: 100_000,
            per_client: PerClientLimit::default(),
            rate: ConnectionRate::default(),
        }
    }
}

/// `[connections.per_client]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PerClientLimit {
    /// Sessions at once per client; over it `421 4.7.0`. 0 turns the rule off.
    pub limit: usize,
    /// `"enforce"` or `"dry-run"`.
    pub mode: Mode,
}

impl Default for PerClientLimit {
    fn default() -> Self {
        Self {
            limit: 20,
            mode: Mode::Enforce,
        }
    }
}

/// `[connections.rate]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConnectionRate {
    /// New sessions per minute per client (sustained); over it `421 4.7.0`. 0 turns it off.
    pub per_minute: u32,
    /// Sessions a client may open in a burst above the sustained rate.
    pub burst: u32,
    /// `"enforce"` or `"dry-run"`.
    pub mode: Mode,
}

impl Default for ConnectionRate {
    fn default() -> Self {
        Self {
            per_minute: 120,
            burst: 30,
            mode: Mode::Enforce,
        }
    }
}

impl Connections {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.max_sessions == 0 {
            return invalid("[connections] max_sessions must be at least 1".into());
        }
        if self.client_prefix_v4 == 0 || self.client_prefix_v4 > 32 {
            return invalid(format!(
                "[connections] client_prefix_v4 = {} must be between 1 and 32",
                self.client_prefix_v4
            ));
        }
        if self.client_prefix_v6 == 0 || self.client_prefix_v6 > 128 {
            return invalid(format!(
                "[connections] client_prefix_v6 = {} must be between 1 and 128",
                self.client_prefix_v6
            ));
        }
        if self.rate.per_minute > 0 && self.rate.burst == 0 {
            return invalid(
                "[connections.rate] burst must be at least 1 when per_minute is set".into(),
            );
        }
        Ok(())
    }
}
