//! At most `limit` requests in flight per key; over it, the request is refused through
//! [`Reject`](crate::Reject). Keys with nothing in flight are forgotten, so the map holds at most
//! as many keys as there are requests in flight.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{KeyedConcurrencyLayer, KeyedConcurrencyState};
pub use service::{KeyedConcurrency, Permit};
