//! Generic protections as tower layers, with no SMTP (or HTTP) types in them.
//!
//! Each layer takes a **key extractor** (`Fn(&Req) -> Option<K>`; `None` exempts a request) and a
//! **rejection** ([`Reject`]) that builds the protocol's own answer: SMTP writes `421`, HTTP
//! returns `429`. Each has an `enforce` and a `dry-run` [`Mode`], and takes its metric handles
//! ([`LimitMetrics`]) from the caller.
//!
//! - [`keyed_concurrency`]: at most N requests in flight per key; the permit lives as long as
//!   the response future (for a connection stack whose future is the whole session: as long as
//!   the session). With a constant key it is a global cap that sheds load instead of queueing.
//! - [`rate_limit`]: GCRA per key (its quota can change on the stored state), with bounded key
//!   tracking.
//! - [`tarpit`]: holds requests for a computed delay, within a budget of requests held at once.
//! - [`fleet`]: what the keyed layers ask of a store several processes share (the GCRA and
//!   the leases of a fleet of replicas); without one, each process counts alone.
//! - [`throttle`]: delays requests by their cost (bytes) against a rate per service instance and
//!   per key; refuses nothing.

mod clock;
mod either;
pub mod fleet;
pub mod keyed_concurrency;
pub mod rate_limit;
mod reject;
pub mod slot;
pub mod tarpit;
pub mod throttle;

pub use clock::TokioClock;
pub use either::Either;
pub use slot::BoxResponse;

pub use reject::{LimitMetrics, Mode, Reject, Rejection};
