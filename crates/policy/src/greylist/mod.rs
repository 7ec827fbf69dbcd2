//! Greylisting (OpenBSD spamd, Postgrey): the first attempt of a (client network, sender,
//! recipient) triplet gets `451 4.7.1` at RCPT TO; a retry after `delay` and within
//! `retry_window` passes, and the triplet is remembered for `pass_ttl`. A client network whose
//! triplets passed `allowlist_after` times skips greylisting for `allowlist_ttl`. Legitimate
//! senders retry and wait a few minutes once; spam engines that never retry give up.
//!
//! Authenticated clients, trusted networks and sessions marked exempt (an access-list `skip`)
//! are not greylisted. The store is in memory, bounded, and saved to a file periodically and on
//! shutdown so a restart does not greylist everyone again; with the fleet's store (Redis), the
//! triplets are there, exact for every replica, and `on_error` says what happens without it.

mod fleet;
mod layer;
mod service;
mod store;

pub use fleet::{FleetGreylist, OnStoreError};
pub use layer::{Exempt, Greylist, GreylistConfig, GreylistError, GreylistLayer};
pub use service::GreylistService;
pub use store::{Clock, Store, Timing, Verdict, system_clock};

/// The response future of [`GreylistService`]: decided at once, or (with the fleet's store)
/// after asking it.
pub type ResponseFuture<F> = attitude_layers::Either<
    attitude_service::ReplyOr<F>,
    attitude_service::BoxFuture<Result<attitude_codec::Reply, attitude_service::BoxError>>,
>;
