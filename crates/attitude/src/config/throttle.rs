//! `[throttle]`: DATA bandwidth per session and per client.

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[throttle]`: how fast message content may arrive. The sender waits; nothing is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Throttle {
    /// DATA octets per second per session (0 = off).
    pub session_bytes_per_second: u32,
    /// DATA octets per second per client network, all its sessions together (0 = off).
    pub client_bytes_per_second: u32,
    /// Octets that may arrive at full speed before the rate applies.
    pub burst_bytes: u32,
    /// `"enforce"`, or `"dry-run"`: nothing waits, what would have is counted
    /// (`attitude_throttle_would_delay_bytes_total`).
    pub mode: Mode,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            session_bytes_per_second: 0,
            client_bytes_per_second: 0,
            burst_bytes: 256 * 1024,
            mode: Mode::Enforce,
        }
    }
}

impl Throttle {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.burst_bytes < 32 * 1024 {
            return Err(ConfigError::Invalid(format!(
                "[throttle] burst_bytes = {} must be at least 32768 (one DATA chunk)",
                self.burst_bytes
            )));
        }
        Ok(())
    }
}
