//! `[greylist]`: greylisting at RCPT TO.

use std::path::PathBuf;
use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[greylist]`: the first attempt of a (client network, sender, recipient) triplet gets
/// `451 4.7.1` at RCPT TO; a retry after `delay` and within `retry_window` passes. Off by
/// default (it delays every new correspondent's first message by the sender's retry interval).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Greylist {
    /// Greylist at all.
    pub enabled: bool,
    /// A retry passes once this long after the first attempt.
    #[serde(with = "duration")]
    pub delay: Duration,
    /// ... and only within this long of it; later the triplet starts over.
    #[serde(with = "duration")]
    pub retry_window: Duration,
    /// A passed triplet is remembered this long after its last message.
    #[serde(with = "duration")]
    pub pass_ttl: Duration,
    /// Passed triplets after which a client network skips greylisting ...
    pub allowlist_after: u32,
    /// ... for this long after its last message.
    #[serde(with = "duration")]
    pub allowlist_ttl: Duration,
    /// Client networks: the address reduced to this prefix (IPv4).
    pub client_prefix_v4: u8,
    /// ... and IPv6.
    pub client_prefix_v6: u8,
    /// Most triplets remembered.
    pub max_entries: usize,
    /// Saved on shutdown and every `save_interval`, loaded on start (none: memory only).
    pub file: Option<PathBuf>,
    /// How often the file is saved while running ("0s": only on shutdown), so that a crash or
    /// an OOM kill loses at most this much.
    #[serde(with = "duration")]
    pub save_interval: Duration,
    /// Enforce or dry-run.
    pub mode: Mode,
}

impl Default for Greylist {
    fn default() -> Self {
        // The times are the greylist's own defaults (Postgrey's delay, spamd's TTLs).
        let timing = attitude_policy::greylist::Timing::default();
        Self {
            enabled: false,
            delay: timing.delay,
            retry_window: timing.retry_window,
            pass_ttl: timing.pass_ttl,
            allowlist_after: timing.allowlist_after,
            allowlist_ttl: timing.allowlist_ttl,
            client_prefix_v4: 24,
            client_prefix_v6: 64,
            max_entries: timing.max_entries,
            file: None,
            save_interval: Duration::from_secs(300),
            mode: Mode::Enforce,
        }
    }
}

impl Greylist {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled {
            return Ok(());
        }
        if self.retry_window <= self.delay {
            return invalid(format!(
                "[greylist] retry_window ({:?}) must be longer than delay ({:?})",
                self.retry_window, self.delay
            ));
        }
        if self.client_prefix_v4 == 0 || self.client_prefix_v4 > 32 {
            return invalid("[greylist] client_prefix_v4 must be between 1 and 32".into());
        }
        if self.client_prefix_v6 == 0 || self.client_prefix_v6 > 128 {
            return invalid("[greylist] client_prefix_v6 must be between 1 and 128".into());
        }
        if self.max_entries < 100 {
            return invalid("[greylist] max_entries must be at least 100".into());
        }
        Ok(())
    }
}
