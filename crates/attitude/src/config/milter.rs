//! `[[milters]]` and `[milter]`: the mail filters asked at each stage, as Postfix's
//! `smtpd_milters` asks them (see docs/operations.md, "Milters").

use std::time::Duration;

use attitude_engines::milter::MilterAddress;
use attitude_layers::Mode;
use attitude_policy::milter::{DefaultAction, Discard};
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[[milters]]`: one milter; a listener's `policy.milters` replaces the list for its sessions
/// (the signing milter only on 587).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct MilterConfig {
    /// Its name in logs and metrics.
    pub name: String,
    /// `inet:host:port` (or `host:port`, or Postfix's `inet:port@host`), or `unix:/path`.
    pub address: String,
    /// When it cannot be asked: `"accept"`, `"tempfail"` (451 4.7.1) or `"reject"` (554 5.7.1)
    /// for the rest of the session, as Postfix's `milter_default_action`.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Connecting and the negotiation (Postfix's `milter_connect_timeout`).
    #[serde(default = "thirty_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// Each stage up to DATA, each header (`milter_command_timeout`).
    #[serde(default = "thirty_seconds", with = "duration")]
    pub command_timeout: Duration,
    /// Body and end of message (`milter_content_timeout`; progress replies restart it).
    #[serde(default = "five_minutes", with = "duration")]
    pub content_timeout: Duration,
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// `[milter]`: what every milter's answers mean.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MilterSection {
    /// `"enforce"`, or `"dry-run"` (every milter asked and counted, nothing applied).
    pub mode: Mode,
    /// A milter's DISCARD: `"reject"` (554 5.7.1) or `"accept"` (250 and dropped, Postfix's
    /// behaviour, logged).
    pub discard: Discard,
    /// The reply code (451 or 554) of a message whose envelope a milter changed in a way that
    /// does not pass relay control or the rates.
    pub envelope_code: u16,
}

impl Default for MilterSection {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            discard: Discard::Reject,
            envelope_code: 451,
        }
    }
}

impl MilterConfig {
    /// The address, parsed.
    pub(crate) fn address(&self) -> Result<MilterAddress, String> {
        self.address
            .parse()
            .map_err(|e| format!("[[milters]] {}: {e}", self.name))
    }
}

/// Checks the milters and their section.
pub(super) fn validate(
    milters: &[MilterConfig],
    section: &MilterSection,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    for (i, m) in milters.iter().enumerate() {
        if m.name.is_empty() || milters[..i].iter().any(|o| o.name == m.name) {
            return invalid(format!(
                "[[milters]] #{}: give each milter its own name (it labels its metrics)",
                i + 1
            ));
        }
        m.address().map_err(ConfigError::Invalid)?;
        if [m.connect_timeout, m.command_timeout, m.content_timeout]
            .iter()
            .any(Duration::is_zero)
        {
            return invalid(format!("[[milters]] {}: timeouts must be above 0", m.name));
        }
    }
    if !matches!(section.envelope_code, 451 | 554) {
        return invalid(format!(
            "[milter] envelope_code {}: 451 (try again) or 554 (refused)",
            section.envelope_code
        ));
    }
    Ok(())
}
