//! Pregreet (postscreen's early-talker test), in the connection stack: before the greeting,
//! attitude pauses (optionally after a `220-` first line, which a real client must wait out);
//! a client that talks during the pause is an early talker, a spam engine that does not wait
//! for the server. It is refused (`554 5.5.1` to its first command, or the connection is
//! dropped) and remembered for `fail_ttl`: it is refused at once if it comes back in that time.
//! A client that waits is remembered for `pass_ttl` and greeted at once next time. All of this
//! happens within the session: the client is never told to reconnect.

mod layer;
mod service;

pub use layer::{PregreetAction, PregreetConfig, PregreetLayer, PregreetMemory};
pub use service::Pregreet;
