//! At most `limit` requests in flight per key; over it, the request is refused through
//! [`Reject`](crate::Reject). Keys with nothing in flight are forgotten, so the map holds at most
//! as many keys as there are requests in flight. Over a [`Fleet`](crate::fleet::Fleet), each
//! request also holds a lease in the shared store, so the limit holds across processes.

mod future;
mod layer;
mod lease;
mod service;

pub use future::ResponseFuture;
pub use layer::{KeyedConcurrencyLayer, KeyedConcurrencyState};
pub use lease::LeaseTerms;
pub use service::{KeyedConcurrency, Permit};
