//! attitude's SMTP policies, each a tower layer of the command stack with `enforce` and
//! `dry-run` modes and a decision counter `attitude_policy_decisions_total{policy,action}`:
//!
//! - [`access`]: allow/deny/skip rules on the client, HELO name, sender and recipient.
//! - [`content`]: header checks and attachment (worm) blocking on the message itself.
//! - [`greylist`]: greylisting of (client network, sender, recipient) at RCPT TO.
//! - [`pregreet`]: the early-talker test before the greeting (connection stack).
//!
//! The generic protections (limits, throttle, tarpit) are in `attitude-layers`; these know SMTP.

pub mod access;
pub mod content;
mod decisions;
pub mod greylist;
pub mod pregreet;

pub use decisions::Decisions;
