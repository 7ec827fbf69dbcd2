//! `[stress]`: stress mode (Postfix's), entered when the process holds most of its sessions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[stress]`: while sessions in flight are at `enter_at` of `[connections] max_sessions` or
/// more (until they are below `leave_at`), every session, new and running, has these limits
/// instead of its own (each is the stricter of the two); authenticated sessions and trusted
/// networks keep theirs. The defaults are Postfix's stress values (`postconf -d | grep stress`):
/// 10 s for `smtpd_timeout`, 1 for `smtpd_hard_error_limit` and `smtpd_junk_command_limit`,
/// 2 s for `postscreen_greet_wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StressSection {
    /// Stress mode at all.
    pub enabled: bool,
    /// Enter at this share of `max_sessions` ...
    pub enter_at: f64,
    /// ... and leave below this one.
    pub leave_at: f64,
    /// A complete command must arrive within this long.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Longest silence inside DATA.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Octets per second a message must average after `data_timeout`.
    pub min_data_rate: u64,
    /// Error replies after which the session is closed.
    pub max_errors: u32,
    /// Junk commands after which the session is closed.
    pub junk_command_limit: u32,
    /// The pregreet pause (Postfix: `postscreen_greet_wait` 2 s under stress, 6 s otherwise).
    #[serde(with = "duration")]
    pub pregreet_pause: Duration,
    /// How long a client over its own limits waits for its 421 (`[tarpit] refusal_delay`):
    /// shorter under stress, so held refusals give their budget back sooner.
    #[serde(with = "duration")]
    pub refusal_delay: Duration,
}

impl Default for StressSection {
    fn default() -> Self {
        Self {
            enabled: true,
            enter_at: 0.7,
            leave_at: 0.5,
            command_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(10),
            min_data_rate: 5000,
            max_errors: 1,
            junk_command_limit: 1,
            pregreet_pause: Duration::from_secs(2),
            refusal_delay: Duration::from_secs(1),
        }
    }
}

impl StressSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[stress] {m}")));
        if !self.enabled {
            return Ok(());
        }
        if !(self.enter_at > 0.0 && self.enter_at <= 1.0) {
            return invalid("enter_at must be a share of max_sessions, above 0 and at most 1");
        }
        if !(self.leave_at >= 0.0 && self.leave_at < self.enter_at) {
            return invalid("leave_at must be at least 0 and below enter_at (the hysteresis)");
        }
        if self.command_timeout.is_zero() || self.data_timeout.is_zero() {
            return invalid("command_timeout and data_timeout must be above 0");
        }
        if self.max_errors == 0 {
            return invalid("max_errors must be at least 1");
        }
        Ok(())
    }
}
