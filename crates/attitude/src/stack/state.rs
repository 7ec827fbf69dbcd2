//! What the process remembers (`docs/design.md`, "Where state lives"): the session counts, the
//! connection rate, the `[[rates]]` buckets by rule name, the AUTH guard's bans, the pregreet
//! verdicts and the DNSBL scores (one cache per zone list). Every listener's stack and every
//! configuration a reload brings is built over it and applies its own limits to it, so a reload
//! or a second listener counts on where the first was. With `[state] redis` ([`Fleet`]), the
//! per-client session counts, the rates and the AUTH guard's counts are the fleet's; the
//! process keeps its own as the fallback while Redis is away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use attitude_layers::LimitMetrics;
use attitude_layers::fleet::Fleet as LayerFleet;
use attitude_layers::keyed_concurrency::KeyedConcurrencyState;
use attitude_layers::rate_limit::RateLimitState;
use attitude_policy::auth_guard::AuthGuardState;
use attitude_policy::dnsbl::DnsblCache;
use attitude_policy::fleet::VerdictTable;
use attitude_policy::pregreet::PregreetMemory;
use governor::Quota;

use super::fleet::Fleet;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ProcessState {
    /// The AUTH guard's failure counts and bans.
    pub auth_guard: Arc<AuthGuardState>,
    /// The pregreet test's verdicts.
    pub pregreet: Arc<PregreetMemory>,
    /// DNSBL scores, one cache per zone list.
    dnsbl: Mutex<HashMap<String, Arc<DnsblCache>>>,
    /// Sessions in flight (`[connections] max_sessions`).
    pub sessions: KeyedConcurrencyState<()>,
    /// Sessions in flight per client network (`[connections.per_client]`).
    pub per_client: KeyedConcurrencyState<IpAddr>,
    connection_rate: Mutex<Option<RateLimitState<IpAddr>>>,
    rates: Mutex<HashMap<String, RateLimitState<String>>>,
    /// The fleet's store, when `[state] redis` is set.
    pub fleet: Option<Fleet>,
}

impl ProcessState {
    /// Nothing remembered yet; the counts' metric handles registered; the fleet's store, if
    /// any, behind the per-client counts and every rate made later.
    pub(crate) fn new(fleet: Option<Fleet>) -> Self {
        let concurrency = |rule: &str, key: &'static str| {
            LimitMetrics::register("attitude_limit", "concurrency", rule, key)
        };
        Self {
            auth_guard: Arc::default(),
            pregreet: Arc::default(),
            dnsbl: Mutex::default(),
            sessions: KeyedConcurrencyState::new(
                "max_sessions",
                concurrency("max_sessions", "global"),
            ),
            per_client: {
                let counts =
                    KeyedConcurrencyState::new("per_client", concurrency("per_client", "client"));
                match &fleet {
                    Some(f) => counts.fleet(LayerFleet::display(f.store.clone()), f.leases.clone()),
                    None => counts,
                }
            },
            connection_rate: Mutex::default(),
            rates: Mutex::default(),
            fleet,
        }
    }

    /// `state` over the fleet's store, if there is one.
    fn shared<K: std::hash::Hash + Eq + Clone + std::fmt::Display>(
        &self,
        state: RateLimitState<K>,
    ) -> RateLimitState<K> {
        match &self.fleet {
            Some(f) => state.fleet(LayerFleet::display(f.store.clone())),
            None => state,
        }
    }

    /// The DNSBL score cache for `zones` (as configured: a changed list or weight is another
    /// cache). Bounded by the configurations seen; each cache by its own `max_cache`.
    pub(crate) fn dnsbl_cache(&self, zones: &[String]) -> Arc<DnsblCache> {
        self.dnsbl
            .lock()
            .expect("state lock")
            .entry(DnsblCache::key(zones))
            .or_default()
            .clone()
    }

    /// The fleet's table `table` of verdicts, if there is a fleet.
    pub(crate) fn verdicts(&self, table: &str) -> Option<VerdictTable> {
        self.fleet.as_ref().map(|f| VerdictTable {
            store: f.policies.clone(),
            table: table.to_owned(),
        })
    }

    /// The fleet's table of DNSBL scores for `zones` (as configured; another list or weight is
    /// another table, named by a hash of the list: every replica runs the same binary).
    pub(crate) fn dnsbl_verdicts(&self, zones: &[String]) -> Option<VerdictTable> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        DnsblCache::key(zones).hash(&mut hasher);
        self.verdicts(&format!("dnsbl:{:016x}", hasher.finish()))
    }

    /// The connection rate's buckets, with `quota` and `max_keys` applied to them (a reload
    /// that changes the rate keeps what each client has used).
    pub(crate) fn connection_rate(&self, quota: Quota, max_keys: usize) -> RateLimitState<IpAddr> {
        let mut rate = self.connection_rate.lock().expect("state lock");
        let state = rate.get_or_insert_with(|| {
            self.shared(RateLimitState::new(
                "connection_rate",
                quota,
                max_keys,
                LimitMetrics::register("attitude_limit", "rate", "connection_rate", "client"),
            ))
        });
        apply(state, quota, max_keys);
        state.clone()
    }

    /// The buckets of the rate rule `name`, on the same terms as the connection rate's.
    pub(crate) fn rate(
        &self,
        name: &str,
        quota: Quota,
        max_keys: usize,
        metrics: impl FnOnce() -> LimitMetrics,
    ) -> RateLimitState<String> {
        let mut rates = self.rates.lock().expect("state lock");
        let state = rates
            .entry(name.to_owned())
            .or_insert_with(|| self.shared(RateLimitState::new(name, quota, max_keys, metrics())));
        apply(state, quota, max_keys);
        state.clone()
    }
}

/// A rule's (possibly new) terms on its stored state.
fn apply<K: std::hash::Hash + Eq + Clone>(
    state: &RateLimitState<K>,
    quota: Quota,
    max_keys: usize,
) {
    if state.quota() != quota {
        state.set_quota(quota);
    }
    state.set_max_keys(max_keys);
}
