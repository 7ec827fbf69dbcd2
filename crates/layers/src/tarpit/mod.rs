//! Tarpit: holds a request for a delay that the caller computes (e.g. from the session's error
//! count) before its response. The inner service is called at once (it need not be `Clone`: a
//! per-session stack is not) and its response future is first polled after the delay, so the
//! work an inner service does in its future waits, and what it does in `call` does not. A budget caps how many requests may be held at once, so the
//! tarpit never becomes a self-inflicted denial of service; over the budget the request is
//! refused through [`Reject`](crate::Reject) instead.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{TarpitLayer, TarpitMetrics};
pub use service::Tarpit;
