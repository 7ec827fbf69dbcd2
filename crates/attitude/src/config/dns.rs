//! `[dns]`: the resolver of attitude's own lookups.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[dns]`: the resolver attitude's own lookups use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Dns {
    /// Nameservers as IP:PORT (empty: the system's, from /etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// How long one client's lookups may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

impl Dns {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "[dns] timeout must be longer than 0".into(),
            ));
        }
        Ok(())
    }
}
