//! GCRA rate limit per key (attitude's own GCRA, `gcra.rs`; quotas are `governor::Quota`s and
//! time is a `governor` clock): over the rate, the request is refused through
//! [`Reject`](crate::Reject) with a `retry_after`. The state ([`RateLimitState`]) can be shared
//! by several layers, and its quota changed while it keeps what each key used.
//!
//! Bounded: every 1024 requests the layer checks how many keys it tracks; over `max_keys` it
//! forgets keys that are back at full burst (`retain_recent`), and if that is not enough it
//! starts over with an empty map (failing open for a moment rather than growing without bound;
//! counted in `resets`). [`RateLimitLayer::housekeeping`] does the same on a timer.

mod future;
mod gcra;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{KeyedLimiter, RateLimitLayer, RateLimitState};
pub use service::RateLimit;
