//! Clients of the content scanners mail operators already run, with no SMTP types: a message is
//! bytes, an envelope is strings.
//!
//! - [`clamav`]: clamd's `zINSTREAM`, fed chunk by chunk while the message arrives (a task per
//!   scan, behind a bounded channel), over TCP or a unix socket, several daemons tried in turn;
//! - [`rspamd`]: `POST /checkv2` with the envelope in rspamd's request headers, over a pooled
//!   HTTP/1.1 client (hyper), the reply's action, message, subject and milter header changes;
//! - [`milter`]: the MTA's side of the milter protocol (version 6), for opendkim, opendmarc,
//!   clamav-milter, rspamd's proxy and every other mail filter.
//!
//! Both protocols are small, so they are written here over tokio and hyper rather than taken
//! from a crate: the clamd crates scan a whole buffer or a finished stream, not one that is
//! still arriving, and no maintained rspamd client speaks the HTTP/1.1 pool attitude already
//! has (hyper) without pulling in a second HTTP stack.

pub mod clamav;
pub mod milter;
pub mod rspamd;
