//! Access lists: rules on the client address, the HELO name, the sender and the recipient, each
//! `allow`, `deny` or `skip` (allow, and exempt the session from the other checks that honour
//! [`Marks::exempt`](attitude_service::Marks::exempt), such as greylisting).
//!
//! Rules are checked in order and the first one that matches decides, like Postfix's access
//! maps with `smtpd_delay_reject`: at MAIL FROM with the client, HELO and sender known, and at
//! each RCPT TO with the recipient too (where only a recipient rule can decide anew: any other
//! first match was acted on at MAIL FROM). `deny` answers `554 5.7.1`.

mod layer;
mod matcher;
mod service;

pub use layer::{AccessAction, AccessConfig, AccessLayer, AccessRule, Field};
pub use matcher::{Matcher, MatcherError};
pub use service::Access;

/// The response future of [`Access`].
pub type ResponseFuture<F> = attitude_service::ReplyOr<F>;
