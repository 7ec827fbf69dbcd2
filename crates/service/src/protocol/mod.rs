//! RFC 5321 sequencing and the replies attitude gives itself.
//!
//! Answers EHLO (with attitude's own capabilities), NOOP, VRFY, HELP and the commands attitude
//! does not offer; refuses out-of-sequence commands with 503, DATA without recipients with 554,
//! oversized messages with 552; passes envelope and content events inward.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{BackendOffer, ProtocolConfig, ProtocolLayer, RELAYED, relayed};
pub use service::Protocol;
