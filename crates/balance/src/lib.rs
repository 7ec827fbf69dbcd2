//! attitude's backend stack: the pool of backend mail servers.
//!
//! - **Discovery**: a static list ([`Pool::set_source`]) and DNS names re-resolved on an
//!   interval ([`Pool::discover_dns`], A/AAAA or SRV: a Kubernetes headless Service). Each
//!   worker thread's balancer sees the usable set as a tower `Discover` stream.
//! - **Health**: SMTP checks (connect, 220, EHLO, QUIT) with rise/fall thresholds; passive
//!   outlier detection ejects a backend that keeps failing, for a backoff that doubles while it
//!   keeps failing, never more than a share of the backends that are up.
//! - **Balancing** per transaction with `tower::balance::p2c`; the load is the backend's
//!   transactions in flight (all threads) ÷ its weight.
//! - **Reuse**: after a transaction the connection goes back to the pool (per backend, per
//!   worker thread, bounded in count, idle time, age and transactions), so a one-message client
//!   session costs the backend no TCP handshake, greeting or EHLO.
//! - **Identity**: XCLIENT before a transaction (sent again when a pooled connection serves
//!   another client) or a PROXY v2 header at connect (the connection then serves one client).
//! - **Limits**: connections per backend, with a bounded wait for a slot.
//!
//! What a transaction does with its [`Lease`] (failover, replay) is the relay's business, in
//! attitude-service.

//!
//! The modules, each importing only those listed before it:
//! `config`, `identity`, `transport`, `caps` (what backends offer) → `conn` (a plain SMTP client connection) → `backend` (one server's
//! state and idle connections) → `health` → `registry` (members, usable set, ejection) →
//! `lease` → `connector` (opens and pools connections) → `discover` (balancer endpoints) →
//! `balancer` (p2c per thread), `dns` (discovery) → `pool` (the facade).

mod backend;
mod balancer;
mod caps;
mod config;
mod conn;
mod connector;
mod discover;
mod dns;
mod health;
mod identity;
mod lease;
mod pool;
mod registry;
mod transport;

pub use backend::{Backend, BackendSpec, FailureKind};
pub use caps::{BackendCaps, Offer};
pub use config::{BackendTls, HealthConfig, OutlierConfig, PoolConfig};
pub use conn::{BackendConn, BackendError, CapsHook};
pub use connector::CheckoutError;
pub use dns::DnsSource;
pub use identity::{ClientIdentity, IdentityMode, XclientAttrs, proxy_local_header};
pub use lease::Lease;
pub use pool::Pool;
pub use transport::{Dial, TcpDial, Transport};
