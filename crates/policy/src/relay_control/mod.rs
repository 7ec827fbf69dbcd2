//! Relay control: never an open relay. A recipient is accepted for relaying only when its domain
//! is local, the client is in a trusted network, or the client has authenticated; otherwise RCPT
//! gets `554 5.7.1 Relay access denied` (in `dry-run` mode it is counted and let through).
//! From such a client a local part with a routing form (`%`, `!`, a quoted `@`) is refused
//! too, unless `allow_routing`: a backend that rewrites them would relay for it.

mod layer;
mod service;

pub use layer::{Decision, RelayControlConfig, RelayControlLayer, RelayControlMetrics};
pub use service::RelayControl;

/// The response future of [`RelayControl`].
pub type ResponseFuture<F> = attitude_service::ReplyOr<F>;
