//! The greylist's operation on the fleet's shared store, and what it does without an answer.

use attitude_layers::fleet::FleetFuture;

use super::{Timing, Verdict};

/// Greylisting in the fleet's shared store (`[state] redis`; implemented over Redis in the
/// binary).
pub trait FleetGreylist: Send + Sync + std::fmt::Debug + 'static {
    /// Greylists one attempt (`network` as text, `sender` and `recipient` normalised), exactly:
    /// a retry on any replica passes.
    fn greylist(
        &self,
        network: &str,
        sender: &str,
        recipient: &str,
        timing: &Timing,
    ) -> FleetFuture<Verdict>;
}

/// What a greylist does when the shared store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum OnStoreError {
    /// Let the recipient through (fail open: mail is not delayed because Redis is).
    #[default]
    Accept,
    /// Greylist with this process's own store (a retry on another replica is greylisted again).
    Local,
}
