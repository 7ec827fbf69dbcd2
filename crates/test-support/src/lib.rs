//! Test helpers for attitude's end-to-end tests.
//!
//! - [`Peer`]: a child process (attitude itself, Postfix's smtp-sink, the aiosmtpd recorder)
//!   that announces its address on stdout and is killed, by its PID, when dropped;
//! - [`Client`]: a scripted raw SMTP client over a blocking socket, for byte-level tests that
//!   no real client would send (smuggling, over-long lines, NUL, drip);
//! - [`Sink`] (the project's sink, restartable on a fixed port) and [`Postfix`] (a real Postfix
//!   instance with its own configuration directory) as backends.
//!
//! - [`RedisServer`]: a real `redis-server` for the fleet tests, and `redis-cli` to inspect it;
//! - [`TestCa`]: certificates signed by a CA of the test's own;
//! - [`session`]: the real driver, command stack and pool in process, over `tokio::io::duplex`,
//!   against scripted backends, for paused-clock tests.
//!
//! Everything binds loopback only, on ports the test chose (port 0 where the peer allows it).

mod backends;
mod client;
mod dns;
mod engines;
mod milters;
mod peer;
mod recorder;
mod redis;
pub mod session;
mod tls;

pub use backends::{Postfix, Sink};
pub use client::Client;
pub use dns::{DnsServer, Rr, silent_nameserver};
pub use engines::{Clamd, EICAR, GTUBE, Rspamd, SOFT_SENDER};
pub use milters::{BadMilter, Misbehaviour, OpenDkim};
pub use peer::{
    Attitude, Peer, SmtpSink, addr_of, attitude_bin, config_error, free_port, http_get,
    python_peer, require_tool, run, scratch_dir, smtplib, tls_client, tls_client_command, wait_for,
};
pub use recorder::{Recorded, Recorder, split_trace};
pub use redis::RedisServer;
pub use tls::TestCa;
