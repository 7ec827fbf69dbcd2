//! SMTP wire format for attitude.
//!
//! This crate knows bytes and grammar, never sockets:
//! - [`Command`] and [`Reply`]: the vocabulary, with their wire encodings;
//! - [`ServerCodec`]: a `tokio_util::codec` `Decoder` for what a client sends (commands, DATA
//!   content, AUTH continuation lines) and an `Encoder` for replies;
//! - [`ClientCodec`]: the other side, used to talk to a backend: encodes commands and DATA
//!   content (re-dot-stuffed, canonical CRLF), decodes multi-line replies.
//!
//! The DATA decoder is the smuggling guard: DATA ends only at `<CRLF>.<CRLF>`, and bare CR, bare
//! LF and NUL are either refused (the whole message fails at end of data) or normalised, per
//! [`BareLineEndings`].

mod bdat;
mod client;
mod command;
mod ext;
#[doc(hidden)]
pub mod fuzzing;
mod reply;
mod server;
mod stuff;

pub use client::{ClientCodec, ClientCodecError};
pub use command::{Body, Command, CommandError, MailFrom, Param, RcptTo};
pub use ext::{Extension, Extensions};
pub use reply::{EnhancedStatus, Reply};
pub use server::{BareLineEndings, CodecConfig, DataError, Frame, LongLines, Mode, ServerCodec};
pub use stuff::{dot_stuff_into, is_wire_ready};
