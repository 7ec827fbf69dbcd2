//! What the SMTP policies ask of the fleet's shared store (`[state] redis`; attitude-state
//! implements it over Redis, the binary links the two). Every call may fail: each policy says
//! what it does then (the greylist passes or asks its own store, the AUTH guard keeps to its
//! local bans), and never fails a session for it.

use std::sync::Arc;
use std::time::Duration;

use attitude_layers::fleet::FleetFuture;

/// The policies' operations on the shared store (the greylist's own is
/// [`FleetGreylist`](crate::greylist::FleetGreylist)).
pub trait FleetPolicies: Send + Sync + std::fmt::Debug + 'static {
    /// Counts one failure of `subject` within `window`; at `limit` it is banned for `ban`
    /// (unless `dry_run`). True when this failure crossed the limit.
    fn tally(
        &self,
        subject: &str,
        limit: u32,
        window: Duration,
        ban: Duration,
        dry_run: bool,
    ) -> FleetFuture<bool>;

    /// The ban left on each of `subjects` (`None`: not banned), in their order.
    fn banned(&self, subjects: Vec<String>) -> FleetFuture<Vec<Option<Duration>>>;

    /// Keeps a verdict (`table`: `pregreet`, `dnsbl:...`) for `ttl`.
    fn put(&self, table: &str, key: &str, value: String, ttl: Duration) -> FleetFuture<()>;

    /// A verdict kept, and how long it has left.
    fn get(&self, table: &str, key: &str) -> FleetFuture<Option<(String, Duration)>>;
}

/// Verdicts kept in one table of the shared store (pregreet's, a DNSBL zone list's), with a
/// short local cache in front (the policy's own): the store is asked only when this process
/// does not know the client, and told each new verdict in the background.
#[derive(Debug, Clone)]
pub struct VerdictTable {
    /// The store.
    pub store: Arc<dyn FleetPolicies>,
    /// The table's name in its keys.
    pub table: String,
}

impl VerdictTable {
    /// The verdict on `key`, and how long it has left (`None`: unknown, or the store is away).
    pub async fn get(&self, key: &str) -> Option<(String, Duration)> {
        self.store.get(&self.table, key).await.ok().flatten()
    }

    /// Keeps `value` for `key` for `ttl`, in the background (a lost write costs one more test).
    pub fn put(&self, key: &str, value: String, ttl: Duration) {
        let put = self.store.put(&self.table, key, value, ttl);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = put.await;
            });
        }
    }
}
