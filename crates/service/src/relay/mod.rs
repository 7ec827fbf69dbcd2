//! The innermost service: relays each transaction to a backend mail server and returns the
//! backend's own replies.
//!
//! - connects lazily, at the first MAIL of a session (an idle client costs one socket);
//! - tries the backends in turn (round-robin start) until one greets with 220 and accepts EHLO;
//! - relays MAIL and each RCPT, streams DATA chunk by chunk (re-dot-stuffed, canonical CRLF) and
//!   returns the backend's end-of-data reply: attitude never says 250 for a message itself;
//! - a backend that is down, slow or gone mid-transaction gives the client a 4xx, never a 250;
//!   a failed message closes the backend connection before the final dot, so the backend keeps
//!   nothing of it;
//! - keeps the backend connection for the session's next transaction; QUITs it at the end.

mod backend;
mod service;

pub use backend::{BackendCaps, BackendError};
pub use service::{Relay, RelayConfig, RelayMetrics, RelayShared};
