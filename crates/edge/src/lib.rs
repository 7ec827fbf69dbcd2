//! attitude's edge, between the socket and the SMTP session:
//!
//! - [`Stream`]: a connection in the clear or in TLS, which a session upgrades in place
//!   (STARTTLS) and the backend pool uses towards backends;
//! - [`tls`]: rustls with the ring provider only; a server certificate reloaded when its files
//!   change, and client settings for backends;
//! - [`proxy`]: PROXY protocol v1/v2 in, read exactly up to the end of the header;
//! - [`watch`]: reload triggers from file changes, watched by directory.

pub mod proxy;
mod stream;
pub mod tls;
pub mod watch;

pub use stream::{Stream, TlsInfo};
