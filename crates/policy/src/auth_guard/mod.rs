//! AUTH brute-force guard: failed AUTH exchanges are counted per client network and per login
//! (so a password guessed from many addresses is caught too). Each failure is answered after
//! `failure_delay`; past `max_failures_per_client` (or `_per_login`) within `window`, the client
//! network (or the login) is banned for `ban`: the exchange ends with `421 4.7.0` and the
//! session closes, and AUTH from a banned network, or for a banned login, gets the same at once.
//! In dry-run mode the bans are only counted.

mod layer;
mod service;

pub use layer::{AuthGuardConfig, AuthGuardLayer, AuthGuardState};
pub use service::AuthGuard;
