//! attitude's SMTP policies, each a tower layer of the command stack with `enforce` and
//! `dry-run` modes and a decision counter `attitude_policy_decisions_total{policy,action}`:
//!
//! - [`auth_guard`]: failed AUTH counted per client network and per login; bans.
//! - [`relay_control`]: never an open relay: RCPT for a remote domain needs a trusted network
//!   or AUTH.
//! - [`access`]: allow/deny/skip rules on the client, HELO name, sender and recipient.
//! - [`dnsbl`]: DNSBL/DNSWL scoring of the client at connect (connection stack).
//! - [`content`]: header checks and attachment (worm) blocking on the message itself.
//! - [`spf`]: SPF at MAIL FROM.
//! - [`greylist`]: greylisting of (client network, sender, recipient) at RCPT TO.
//! - [`pregreet`]: the early-talker test before the greeting (connection stack).
//!
//! [`fleet`] is what they ask of the fleet's shared store (Redis), when there is one.
//!
//! The generic protections (limits, throttle, tarpit) are in `attitude-layers`; these know SMTP.

pub mod access;
pub mod auth_guard;
pub mod content;
mod decisions;
pub mod dns;
pub mod dnsbl;
pub mod fleet;
pub mod greylist;
mod held;
pub mod milter;
pub mod pregreet;
pub mod relay_control;
pub mod scan;
pub mod spf;

pub use decisions::Decisions;

/// An accepted connection, as the connection-stack policies (pregreet, DNSBL) see it.
pub trait Accepted {
    /// The client's address.
    fn client(&self) -> std::net::IpAddr;
    /// The socket.
    fn stream(&mut self) -> &mut tokio::net::TcpStream;
    /// What policies conclude about the client, handed on to the session.
    fn marks(&self) -> &attitude_service::Marks;
}

/// The inner service that `poll_ready` made ready, for a future that calls it later; a clone
/// takes its place (tower's pattern for services that call inward after an await).
pub(crate) fn take_readied<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
