//! `[spf]`: SPF at MAIL FROM.

use std::time::Duration;

use attitude_layers::Mode;
use serde::{Deserialize, Serialize};

use super::duration;

/// `[spf]`: SPF (RFC 7208) at MAIL FROM, through the `[dns]` resolver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SpfSection {
    /// Check SPF at all.
    pub enabled: bool,
    /// Refuse `fail` with 550 5.7.23. This is `[spf]`'s `mode`, kept under its first name so that
    /// existing files keep working: `true` is `mode = "enforce"`, `false` is `mode = "dry-run"`
    /// (a `fail` is counted as a would-be refusal and logged, and the mail goes on).
    pub reject_fail: bool,
    /// How long a result for the same client address, sender and HELO is reused.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Most results cached.
    pub max_cache: usize,
}

impl Default for SpfSection {
    fn default() -> Self {
        Self {
            enabled: false,
            reject_fail: true,
            cache_ttl: Duration::from_secs(60),
            max_cache: 10_000,
        }
    }
}

impl SpfSection {
    /// `reject_fail` in the terms every other policy uses: `true` is `enforce` (a `fail` gets
    /// 550 5.7.23), `false` is `dry-run` (a `fail` is counted as a would-be refusal and logged).
    pub(crate) fn mode(&self) -> Mode {
        if self.reject_fail {
            Mode::Enforce
        } else {
            Mode::DryRun
        }
    }
}
