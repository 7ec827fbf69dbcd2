//! `[pregreet]`: the early-talker test before the greeting.

use std::time::Duration;

use attitude_layers::Mode;
use attitude_policy::pregreet::PregreetAction;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[pregreet]`: postscreen's early-talker test. Before the greeting attitude pauses (after a
/// `220-` first line when `multiline`); a client that talks in the pause is refused and
/// remembered, one that waits is greeted at once for `pass_ttl`. Off by default (it delays each
/// new client's first session by `pause`). `[relay] trusted_networks` are not tested.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Pregreet {
    /// Run the test.
    pub enabled: bool,
    /// The pause before the greeting.
    #[serde(with = "duration")]
    pub pause: Duration,
    /// Send `220-hostname ESMTP` before the pause.
    pub multiline: bool,
    /// `reject` (greet, 554 5.5.1 to the first command, close) or `drop` (close at once).
    pub action: PregreetAction,
    /// A client that waited is greeted at once for this long.
    #[serde(with = "duration")]
    pub pass_ttl: Duration,
    /// An early talker is refused at once for this long.
    #[serde(with = "duration")]
    pub fail_ttl: Duration,
    /// Most clients remembered.
    pub max_entries: usize,
    /// Enforce or dry-run.
    pub mode: Mode,
}

impl Default for Pregreet {
    fn default() -> Self {
        Self {
            enabled: false,
            // postscreen_greet_wait and postscreen_greet_ttl.
            pause: Duration::from_secs(6),
            multiline: true,
            action: PregreetAction::Reject,
            pass_ttl: Duration::from_secs(86400),
            fail_ttl: Duration::from_secs(3600),
            max_entries: 100_000,
            mode: Mode::Enforce,
        }
    }
}

impl Pregreet {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.pause.is_zero() {
            return Err(ConfigError::Invalid(
                "[pregreet] pause must be longer than 0 (e.g. \"6s\")".into(),
            ));
        }
        Ok(())
    }
}
