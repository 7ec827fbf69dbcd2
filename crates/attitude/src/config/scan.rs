//! `[clamav]` and `[rspamd]`: the content scanners, asked before the backend commits a message.

use std::time::Duration;

use attitude_engines::clamav::ClamdAddress;
use attitude_layers::Mode;
use attitude_policy::scan::Fallback;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[clamav]`: every message streamed to clamd (`zINSTREAM`) while it goes to the backend; a
/// virus gets `554 5.7.1` naming the signature, and the backend never commits the message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Clamav {
    /// Scan at all.
    pub enabled: bool,
    /// clamd's `TCPSocket` (`host:port`) or `LocalSocket` (a path), several tried in turn.
    pub address: Vec<String>,
    /// Limit for each step: connecting, writing a chunk, the verdict after the last one.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Largest message scanned, in octets (keep it at or below clamd's `StreamMaxLength`).
    pub max_size: u64,
    /// A larger message: `"skip"` (delivered unscanned, counted) or `"tempfail"` (451).
    pub on_oversize: OnOversize,
    /// clamd unreachable, slow or confused: `"tempfail"` (451, fail closed) or `"accept"`.
    pub on_error: Fallback,
    /// `"enforce"`, or `"dry-run"` (a virus is logged and counted, the message delivered).
    pub mode: Mode,
}

/// What a message too big for the virus scanner gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnOversize {
    /// Delivered unscanned (counted).
    Skip,
    /// `451 4.3.4`.
    Tempfail,
}

impl Default for Clamav {
    fn default() -> Self {
        Self {
            enabled: false,
            address: vec!["127.0.0.1:3310".into()],
            timeout: Duration::from_secs(30),
            max_size: 25 * 1024 * 1024,
            on_oversize: OnOversize::Skip,
            on_error: Fallback::Tempfail,
            mode: Mode::Enforce,
        }
    }
}

impl Clamav {
    /// The addresses, parsed.
    pub(crate) fn addresses(&self) -> Vec<ClamdAddress> {
        self.address
            .iter()
            .map(|a| a.parse().expect("validated with the configuration"))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled {
            return Ok(());
        }
        if self.address.is_empty() {
            return invalid(
                "[clamav] address is empty: give clamd's host:port or socket path".into(),
            );
        }
        for a in &self.address {
            if let Err(e) = a.parse::<ClamdAddress>() {
                return invalid(format!("[clamav] address {e}"));
            }
        }
        if self.timeout.is_zero() || self.max_size == 0 {
            return invalid("[clamav] timeout and max_size must be above 0".into());
        }
        Ok(())
    }
}

/// `[rspamd]`: every message checked by an rspamd worker (`POST /checkv2`) at end of data; its
/// action decides (reject → 554, soft reject and greylist → 451, add header, rewrite subject,
/// quarantine → delivered with headers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Rspamd {
    /// Check at all.
    pub enabled: bool,
    /// The normal worker (or proxy), `http://host:port`.
    pub url: String,
    /// Limit for one check.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Largest message checked, in octets; larger ones are delivered unchecked (counted).
    pub max_size: u64,
    /// rspamd unreachable, slow or confused: `"accept"` (fail open) or `"tempfail"` (451).
    pub on_error: Fallback,
    /// Let rspamd change headers (its `milter` add/remove, `add header`, `rewrite subject`,
    /// `quarantine`): the message is then held until the verdict, within
    /// `[content] buffer_budget`.
    pub headers: bool,
    /// Fields added for `add header` and `quarantine`, as `Name: value`.
    pub spam_headers: Vec<String>,
    /// Sent as `Settings-ID` (rspamd's settings for this listener).
    pub settings_id: Option<String>,
    /// Do not check authenticated sessions.
    pub skip_authenticated: bool,
    /// Do not check sessions from `[relay] trusted_networks`.
    pub skip_trusted: bool,
    /// A held message over `[content] buffer_budget`: `"accept"` (delivered unchecked, counted)
    /// or `"tempfail"` (451 4.3.1).
    pub on_over_budget: Fallback,
    /// `"enforce"`, or `"dry-run"` (the would-be verdict is logged and counted).
    pub mode: Mode,
}

impl Default for Rspamd {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "http://127.0.0.1:11333".into(),
            timeout: Duration::from_secs(20),
            max_size: 10 * 1024 * 1024,
            on_error: Fallback::Accept,
            headers: true,
            spam_headers: vec!["X-Spam: Yes".into()],
            settings_id: None,
            skip_authenticated: false,
            skip_trusted: false,
            on_over_budget: Fallback::Tempfail,
            mode: Mode::Enforce,
        }
    }
}

impl Rspamd {
    /// `spam_headers` as name and value.
    pub(crate) fn spam_headers(&self) -> Vec<(String, String)> {
        self.spam_headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled {
            return Ok(());
        }
        if let Err(e) = attitude_engines::rspamd::Rspamd::checkv2(&self.url) {
            return invalid(format!("[rspamd] url {e}"));
        }
        if self.timeout.is_zero() || self.max_size == 0 {
            return invalid("[rspamd] timeout and max_size must be above 0".into());
        }
        for h in &self.spam_headers {
            let ok = h.split_once(':').is_some_and(|(n, v)| {
                let n = n.trim();
                !n.is_empty()
                    && n.bytes().all(|b| (33..=126).contains(&b))
                    && super::printable(v.trim())
            });
            if !ok {
                return invalid(format!(
                    "[rspamd] spam_headers entry {h:?} must be \"Name: value\" in printable ASCII"
                ));
            }
        }
        if let Some(id) = &self.settings_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(format!(
                "[rspamd] settings_id {id:?} must be one word of printable ASCII"
            ));
        }
        Ok(())
    }
}
