//! `[auth]`: AUTH relayed to the backend, and its brute-force guard.

use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[auth]`: AUTH PLAIN/LOGIN relayed to the backend, which checks the credentials; an
/// authenticated client may relay anywhere. Offered only when the backend offers it, and only
/// over TLS (STARTTLS or implicit TLS) unless `allow_plaintext`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Auth {
    /// Offer and relay AUTH.
    pub enabled: bool,
    /// Offer AUTH on unencrypted connections (passwords in the clear: lab and loopback use).
    pub allow_plaintext: bool,
    /// MAIL needs AUTH first (530 5.7.0), as on a submission port.
    pub require: bool,
    /// Mechanisms to offer (of PLAIN and LOGIN).
    pub mechanisms: Vec<String>,
    /// Failed exchanges per client network within `window` before it is banned.
    pub max_failures_per_client: u32,
    /// Failed exchanges per login, from anywhere, within `window` before it is banned.
    pub max_failures_per_login: u32,
    /// The counting window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// How long a network or login stays banned.
    #[serde(with = "duration")]
    pub ban: Duration,
    /// Delay before answering a failed exchange.
    #[serde(with = "duration")]
    pub failure_delay: Duration,
    /// Enforce the bans, or dry-run (count them only).
    pub mode: Mode,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_plaintext: false,
            require: false,
            mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
            max_failures_per_client: 5,
            max_failures_per_login: 10,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(1800),
            failure_delay: Duration::from_secs(2),
            mode: Mode::Enforce,
        }
    }
}

impl Auth {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.enabled {
            for m in &self.mechanisms {
                if !attitude_service::auth::MECHANISMS.contains(&m.to_ascii_uppercase().as_str()) {
                    return invalid(format!(
                        "[auth] mechanisms: {m:?} cannot be relayed; use PLAIN and/or LOGIN"
                    ));
                }
            }
            if self.max_failures_per_client == 0 || self.max_failures_per_login == 0 {
                return invalid(
                    "[auth] max_failures_per_client and _per_login must be at least 1".into(),
                );
            }
        }
        if self.require && !self.enabled {
            return invalid(
                "[auth] require = true needs enabled = true (and a backend that offers AUTH)"
                    .into(),
            );
        }
        Ok(())
    }
}
