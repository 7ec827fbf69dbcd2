//! attitude's SMTP service layer: the request/reply vocabulary, the session driver that turns a
//! socket into `Service::call`s, the protocol layer (RFC 5321 sequencing and local replies), the
//! SMTP metrics layer and the backend relay (the innermost service).
//!
//! A session runs as:
//! ```text
//! socket ─► driver (ServerCodec) ─► MetricsLayer ─► [tarpit] ─► ProtocolLayer ─► [policy layers] ─► Relay ─► backend
//! ```
//! (the binary assembles it, in `crates/attitude/src/stack/command.rs`; `docs/design.md` draws
//! every layer). Fixed replies come from [`replies`].
//! Every decoded frame becomes one [`Request`]; every request gets one [`Reply`] (replies to DATA
//! chunks are not written: an error reply to a chunk fails the message, answered at end of data).

pub mod address;
pub mod auth;
mod boxed;
pub mod driver;
pub mod errors;
pub mod metrics;
pub mod protocol;
pub mod relay;
pub mod replies;
mod request;

pub use attitude_codec::{Command, EnhancedStatus, Reply};
pub use boxed::BoxCommand;
pub use request::{DataOutcome, Event, Helo, Marks, Request, Session, Transaction};

/// The error type of attitude's services (tower's boxed error).
pub type BoxError = tower::BoxError;

/// The response future of a command layer that either answers a request itself, at once, or
/// passes it on: most policies' `ResponseFuture`.
pub type ReplyOr<F> = attitude_layers::Either<F, std::future::Ready<Result<Reply, BoxError>>>;

/// A command layer's own answer, as a [`ReplyOr`].
pub fn answer<F>(reply: Reply) -> ReplyOr<F> {
    attitude_layers::Either::rejected(std::future::ready(Ok(reply)))
}

/// The future type used by attitude's SMTP services.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
