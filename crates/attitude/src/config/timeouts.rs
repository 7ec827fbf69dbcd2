//! `[timeouts]`: time limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[timeouts]`, written like `"300s"`, `"5m"`, `"1h"` or `"250ms"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Timeouts {
    /// A complete command must arrive within this time.
    #[serde(with = "duration")]
    pub command: Duration,
    /// Longest silence inside DATA.
    #[serde(with = "duration")]
    pub data: Duration,
    /// TCP connect to a backend.
    #[serde(with = "duration")]
    pub backend_connect: Duration,
    /// Backend greeting and EHLO reply.
    #[serde(with = "duration")]
    pub backend_greeting: Duration,
    /// Backend reply to MAIL, RCPT, DATA, RSET.
    #[serde(with = "duration")]
    pub backend_command: Duration,
    /// Writing one DATA chunk to a backend.
    #[serde(with = "duration")]
    pub backend_data: Duration,
    /// Backend reply to end of data.
    #[serde(with = "duration")]
    pub backend_data_end: Duration,
    /// On SIGTERM, how long sessions in flight may take to finish.
    #[serde(with = "duration")]
    pub drain_grace: Duration,
    /// On SIGTERM, how long the listener keeps accepting, answering new clients `421 4.3.2`
    /// (a load balancer needs a few seconds to stop sending); within `drain_grace`.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(300),
            data: Duration::from_secs(180),
            backend_connect: Duration::from_secs(10),
            backend_greeting: Duration::from_secs(60),
            backend_command: Duration::from_secs(120),
            backend_data: Duration::from_secs(180),
            backend_data_end: Duration::from_secs(600),
            drain_grace: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
        }
    }
}

impl Timeouts {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.drain_delay > self.drain_grace {
            return invalid(format!(
                "[timeouts] drain_delay ({:?}) must not be longer than drain_grace ({:?})",
                self.drain_delay, self.drain_grace
            ));
        }
        for (name, value) in [
            ("command", self.command),
            ("data", self.data),
            ("backend_connect", self.backend_connect),
            ("backend_greeting", self.backend_greeting),
            ("backend_command", self.backend_command),
            ("backend_data", self.backend_data),
            ("backend_data_end", self.backend_data_end),
        ] {
            if value.is_zero() {
                return invalid(format!("[timeouts] {name} must be greater than 0"));
            }
        }
        Ok(())
    }
}
