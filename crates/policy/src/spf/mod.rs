//! SPF (RFC 7208) at MAIL FROM, with mail-auth: the sender's domain (or, for the null sender,
//! the HELO name) is checked against the client's address. A `fail` is refused with
//! `550 5.7.23` when `reject_fail` is on, otherwise only counted; every other result is counted
//! and let through. The check runs while the backend answers MAIL, so it adds no round trip; a
//! refused sender's MAIL is reset at the backend by the next command, and no message can follow
//! it. Authenticated clients, trusted networks and exempt sessions are not checked. A result is
//! reused for `cache_ttl` for the same client address, sender and HELO name (bounded; temporary
//! errors are not kept).

mod layer;
mod service;

pub use layer::{SpfConfig, SpfLayer};
pub use service::Spf;
