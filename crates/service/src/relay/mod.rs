//! The innermost service: relays each transaction to a backend mail server from the pool and
//! returns the backend's own replies.
//!
//! - takes a backend connection at MAIL, per transaction (p2c over the usable backends, an idle
//!   pooled connection when there is one), and gives it back after the transaction;
//! - if the backend fails before it accepted DATA (no connection, timeout, 421, 4xx to MAIL),
//!   the transaction so far (MAIL and the accepted RCPTs) is replayed on another backend; the
//!   client notices nothing;
//! - streams DATA chunk by chunk (re-dot-stuffed, canonical CRLF) and returns the backend's
//!   end-of-data reply: attitude never says 250 for a message itself;
//! - a backend lost after DATA began gives the client a 4xx, never a 250; a failed message
//!   closes the backend connection before the final dot, so the backend keeps nothing of it;
//! - an authenticated backend connection (AUTH relayed) and a PROXY-identified one belong to
//!   the session and are never pooled.

mod service;

pub use attitude_balance::{BackendCaps, BackendError};
pub use service::{Relay, RelayConfig, RelayMetrics, RelayShared};
