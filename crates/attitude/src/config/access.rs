//! `[access]`: access lists on client, HELO, sender and recipient.

use std::path::PathBuf;

use attitude_layers::Mode;
use attitude_policy::access::{AccessAction, AccessRule, Field, Matcher};
use serde::{Deserialize, Serialize};

use super::{ConfigError, file};

/// `[access]`: rules on the client, HELO name, sender and recipient, checked in order at MAIL
/// FROM and RCPT TO; the first match decides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Access {
    /// The rules (`[[access.rules]]`).
    pub rules: Vec<AccessRuleConfig>,
    /// Enforce or dry-run.
    pub mode: Mode,
}

/// One `[[access.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessRuleConfig {
    /// What the rule looks at.
    pub check: Field,
    /// Values inline.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values from a file, one per line (`#` starts a comment).
    pub file: Option<PathBuf>,
    /// What a match does.
    pub action: AccessAction,
    /// Reply text of a `deny`.
    pub text: Option<String>,
}

impl Access {
    /// The rules, their files read; an error says which rule and what to fix.
    pub(crate) fn rules(&self) -> Result<Vec<AccessRule>, ConfigError> {
        self.rules
            .iter()
            .enumerate()
            .map(|(n, rule)| rule.build(&format!("[[access.rules]] #{}", n + 1)))
            .collect::<Result<_, String>>()
            .map_err(ConfigError::Invalid)
    }
}

impl AccessRuleConfig {
    fn build(&self, name: &str) -> Result<AccessRule, String> {
        let values = file::values(&self.values, self.file.as_deref(), name)?;
        if values.is_empty() {
            return Err(format!("{name}: no values (set `values` or `file`)"));
        }
        let values = values.iter().map(String::as_str);
        let matcher = match self.check {
            Field::Client => Matcher::networks(values),
            Field::Helo => Matcher::names(values),
            Field::Sender | Field::Recipient => Matcher::addresses(values),
        };
        let matcher = matcher.map_err(|e| format!("{name}: {e}"))?;
        if self.action == AccessAction::Skip && !matches!(self.check, Field::Client | Field::Helo) {
            return Err(format!(
                "{name}: action \"skip\" exempts a whole session, so it is for client \
                 and helo rules; use \"allow\" for senders and recipients"
            ));
        }
        if let Some(text) = &self.text
            && !super::printable(text)
        {
            return Err(format!(
                "{name}: text {text:?} must be non-empty printable ASCII"
            ));
        }
        Ok(AccessRule {
            name: name.to_owned(),
            field: self.check,
            matcher,
            action: self.action,
            text: self.text.clone(),
        })
    }
}
