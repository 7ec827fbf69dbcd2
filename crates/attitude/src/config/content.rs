//! `[content]`: header checks and attachment blocking.

use attitude_layers::Mode;
use attitude_policy::content::HeaderAction;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[content]`: checks on the message itself, at end of data. A refused message is aborted at
/// the backend (it is never committed) and the client gets `554 5.7.1` (`451 4.7.1` for a
/// deferring header check).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Content {
    /// Refuse messages with an attachment whose name ends in a blocked extension.
    pub block_attachments: bool,
    /// The blocked extensions (any case, with or without the dot).
    pub blocked_extensions: Vec<String>,
    /// Regular expressions over each header line, first match decides.
    pub header_checks: Vec<HeaderCheckRule>,
    /// Octets of message copies held at once across all sessions; over it messages are deferred
    /// with `451 4.3.1`.
    pub buffer_budget: usize,
    /// Enforce or dry-run (for all content policies).
    pub mode: Mode,
}

impl Default for Content {
    fn default() -> Self {
        Self {
            block_attachments: true,
            blocked_extensions: attitude_policy::content::DEFAULT_BLOCKED
                .iter()
                .map(|e| (*e).to_string())
                .collect(),
            header_checks: Vec::new(),
            buffer_budget: 256 * 1024 * 1024,
            mode: Mode::Enforce,
        }
    }
}

/// One `[[content.header_checks]]` rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderCheckRule {
    /// Regular expression (case-insensitive) over `Name: value`, unfolded.
    pub pattern: String,
    /// `reject` (554 5.7.1) or `defer` (451 4.7.1).
    #[serde(default = "HeaderCheckRule::default_action")]
    pub action: HeaderAction,
    /// Reply text (default: "Message content rejected" / "... deferred").
    pub text: Option<String>,
}

impl HeaderCheckRule {
    fn default_action() -> HeaderAction {
        HeaderAction::Reject
    }
}

impl Content {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for rule in &self.header_checks {
            if let Err(e) = regex::Regex::new(&rule.pattern) {
                return invalid(format!(
                    "[[content.header_checks]] pattern {:?} is not a valid regular expression: {e}",
                    rule.pattern
                ));
            }
            if let Some(text) = &rule.text
                && !super::printable(text)
            {
                return invalid(format!(
                    "[[content.header_checks]] text {text:?} must be non-empty printable ASCII (it \
                     becomes an SMTP reply line)"
                ));
            }
        }
        if self.block_attachments && self.blocked_extensions.is_empty() {
            return invalid(
                "[content] blocked_extensions is empty while block_attachments = true: list \
                 extensions or set block_attachments = false"
                    .into(),
            );
        }
        Ok(())
    }
}
