//! A memory several processes share (the replicas of a fleet), as the keyed layers use it: a
//! rate limit's GCRA and a concurrency limit's leases. This crate defines what it asks of such a
//! store; `attitude-state` implements it over Redis. Every call may fail (the store is away,
//! slow, or its circuit breaker is open): the layers then fall back to what they keep in the
//! process, so a store that is down costs a session nothing but the fleet-wide view.
//!
//! A rate limit takes cells in batches (a small share of the burst, at most
//! [`MAX_BATCH`]) and spends them locally, so a rule whose rate is far above what one key sends
//! costs far less than a round trip per request, and one of a few per hour costs one per request
//! and stays exact; a process can hold at most a batch of a key's cells unspent.
//!
//! Keys are the caller's (a rule name and a key, as text); the store adds its own prefix. Every
//! entry the store makes expires by itself: a GCRA key when it is back at full burst, a lease
//! when its holder stops renewing it (a process that dies leaves no stuck count).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Most cells a rate limit takes from the store at once.
pub const MAX_BATCH: u32 = 64;

/// The cells a rate limit asks for at once, for a burst of `burst`: a hundredth of it, at least
/// one, at most [`MAX_BATCH`].
pub fn batch(burst: u32) -> u32 {
    (burst / 100).clamp(1, MAX_BATCH)
}

/// A boxed, sendable future (the store's calls are dynamic: one store serves every rule).
pub type FleetFuture<T> = Pin<Box<dyn Future<Output = Result<T, FleetError>> + Send>>;

/// Why a store call gave no answer. The caller falls back to its local state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetError {
    /// The store did not answer within its command timeout.
    Timeout,
    /// The circuit breaker is open: the store failed recently and is not asked for a while.
    Open,
    /// The store answered with an error, or the connection failed.
    Failed(String),
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("the shared store did not answer in time"),
            Self::Open => f.write_str("the shared store is away (circuit open)"),
            Self::Failed(why) => write!(f, "the shared store failed: {why}"),
        }
    }
}

impl std::error::Error for FleetError {}

/// What the keyed layers ask of a shared store.
pub trait FleetStore: Send + Sync + fmt::Debug + 'static {
    /// GCRA: takes up to `want` cells of `key` (emission interval `interval`, burst `burst`),
    /// as many as are free, on the store's own clock. `Ok(Ok(n))`: `n` cells taken (at least
    /// one); `Ok(Err(wait))`: none free, one is in `wait`. The key expires when it is back at
    /// full burst.
    fn gcra(
        &self,
        key: String,
        interval: Duration,
        burst: u32,
        want: u32,
    ) -> FleetFuture<Result<u32, Duration>>;

    /// Takes one of the `limit` leases of `key` for `holder` (unique per session), valid for
    /// `ttl` unless renewed. `Ok(false)`: all `limit` are held (by live holders).
    fn acquire(&self, key: String, holder: String, limit: u32, ttl: Duration) -> FleetFuture<bool>;

    /// Extends the leases `(key, holder)` by `ttl` from now.
    fn renew(&self, leases: Vec<(String, String)>, ttl: Duration) -> FleetFuture<()>;

    /// Gives the leases `(key, holder)` back. Nobody waits for it: a store may queue the
    /// releases and send them with a later call (the future is polled once, and driven in the
    /// background only if it is not ready).
    fn release(&self, leases: Vec<(String, String)>) -> FleetFuture<()>;
}

/// A layer's link to the store: the store, and the rule's name in its keys.
pub struct Fleet<K> {
    pub(crate) store: Arc<dyn FleetStore>,
    /// The key as the store sees it (`None`: this key is not shared, counted locally only).
    pub(crate) encode: fn(&K) -> Option<String>,
}

impl<K> Clone for Fleet<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            encode: self.encode,
        }
    }
}

impl<K> fmt::Debug for Fleet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<K> Fleet<K> {
    /// `store`, with keys written by `encode` (`None`: not shared).
    pub fn new(store: Arc<dyn FleetStore>, encode: fn(&K) -> Option<String>) -> Self {
        Self { store, encode }
    }
}

impl<K: fmt::Display> Fleet<K> {
    /// `store`, with each key as it displays.
    pub fn display(store: Arc<dyn FleetStore>) -> Self {
        Self::new(store, |k| Some(k.to_string()))
    }
}
