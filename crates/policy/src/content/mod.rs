//! Content policies on the message itself: header checks and attachment (worm) blocking.
//!
//! The message still streams to the backend chunk by chunk; a copy is kept only while a content
//! policy is on (the header section alone when only header checks are), bounded per message and
//! by a byte budget shared by every session. At end of data the copy is checked; a refused
//! message reaches the relay as `DataEnd(Failed)`, which aborts the backend transaction before
//! its final dot, so the backend never commits it. Over the budget the message is deferred
//! (`451 4.3.1`) rather than let through unchecked.

mod attachments;
mod headers;
mod layer;
mod service;

pub use attachments::{AttachmentRules, Blocked, DEFAULT_BLOCKED};
pub use headers::{HeaderAction, HeaderCheck, HeaderCheckError, first_match};
pub use layer::{ByteBudget, ContentConfig, ContentLayer};
pub use service::Content;

/// The response future of [`Content`].
pub type ResponseFuture<F> = attitude_service::ReplyOr<F>;
