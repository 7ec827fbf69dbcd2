use std::sync::Arc;

use attitude_layers::Mode;
use tower_layer::Layer;

use super::{Access, Matcher};
use crate::Decisions;

/// What a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Field {
    /// The client's address.
    Client,
    /// The HELO/EHLO name.
    Helo,
    /// The MAIL FROM address.
    Sender,
    /// The RCPT TO address.
    Recipient,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum AccessAction {
    /// Let it through; later rules are not checked.
    Allow,
    /// `554 5.7.1`.
    Deny,
    /// Let it through and mark the session exempt from the other checks (client and HELO
    /// rules only: a sender or recipient says nothing about the rest of the session).
    Skip,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct AccessRule {
    /// A name for logs (e.g. `access[2]` or the file it came from).
    pub name: String,
    /// What it looks at.
    pub field: Field,
    /// Its values.
    pub matcher: Matcher,
    /// What a match does.
    pub action: AccessAction,
    /// The reply text of a `deny` (default "Access denied").
    pub text: Option<String>,
}

/// The access lists.
#[derive(Debug)]
pub struct AccessConfig {
    /// Checked in order; the first match decides.
    pub rules: Vec<AccessRule>,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// `policy="access"` decisions.
    pub decisions: Decisions,
}

/// Adds [`Access`].
#[derive(Debug, Clone)]
pub struct AccessLayer {
    config: Arc<AccessConfig>,
}

impl AccessLayer {
    /// A layer with these rules.
    pub fn new(config: AccessConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access::new(inner, self.config.clone())
    }
}
