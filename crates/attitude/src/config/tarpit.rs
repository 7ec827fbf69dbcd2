//! `[tarpit]`: delays for clients that make errors, and for refused clients.

use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::duration;

/// `[tarpit]`: once a session has made `soft_error_limit` errors, each reply waits
/// `delay_per_error` times the errors over the limit (up to `max_delay`); `limits.max_errors`
/// closes it. A session a policy marked suspicious (e.g. it tried to relay) waits at least
/// `suspicious_delay` before each reply. At most `budget` sessions are held at once; over it a
/// session is closed with 421.
///
/// A client refused for its per-client connection limit or connection rate waits
/// `refusal_delay` for its 421: the worm that reconnects at once is slowed down, and each held
/// refusal is a connection it does not make. At most `refusal_budget` refusals are held at once;
/// beyond that the 421 is immediate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Tarpit {
    /// Errors before replies are delayed (0: errors alone never delay).
    pub soft_error_limit: u32,
    /// Delay per error over the soft limit.
    #[serde(with = "duration")]
    pub delay_per_error: Duration,
    /// Longest delay for errors.
    #[serde(with = "duration")]
    pub max_delay: Duration,
    /// Delay before each reply to a session marked suspicious (0 turns it off).
    #[serde(with = "duration")]
    pub suspicious_delay: Duration,
    /// Sessions held in a delay at once.
    pub budget: usize,
    /// How long a client over its per-client connection limit or rate waits for its 421
    /// (0: at once).
    #[serde(with = "duration")]
    pub refusal_delay: Duration,
    /// Refusals held at once.
    pub refusal_budget: usize,
    /// `"enforce"`, or `"dry-run"`: nothing is held, what would have been is counted
    /// (`attitude_tarpit_would_hold_total{stage}`).
    pub mode: Mode,
}

impl Default for Tarpit {
    fn default() -> Self {
        Self {
            // Postfix's smtpd_soft_error_limit and smtpd_error_sleep_time.
            soft_error_limit: 10,
            delay_per_error: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            suspicious_delay: Duration::from_secs(3),
            budget: 1000,
            refusal_delay: Duration::from_secs(5),
            refusal_budget: 1000,
            mode: Mode::Enforce,
        }
    }
}
