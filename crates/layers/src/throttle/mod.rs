//! Bandwidth throttle: delays each request by what it costs (e.g. the bytes of a DATA chunk)
//! against a rate per service instance (an SMTP session) and, optionally, per key (a client
//! network). Nothing is refused: the sender waits. Delaying the call delays the caller's next
//! read, so the socket's own flow control slows the peer down.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{ThrottleLayer, ThrottleMetrics};
pub use service::Throttle;
