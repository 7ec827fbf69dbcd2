//! The fleet's shared memory (`[state] redis`): what several attitude replicas remember
//! together, in Redis. Each operation is one Lua script or one command with the keys' expiry
//! set in the same step (no key without a TTL), on Redis's own clock (`TIME`, never a replica's),
//! bounded by a command timeout and a circuit breaker ([`breaker`]): a caller that gets an
//! error falls back to its local state at once.
//!
//! - [`Redis`] implements [`attitude_layers::fleet::FleetStore`] (GCRA and leases for the
//!   generic layers) and has the policies' operations ([`Redis::greylist`], [`Redis::tally`],
//!   [`Redis::banned`], [`Redis::put`], [`Redis::get`]).
//! - Keys are `{prefix}{<what>:<key>}`: the braces are a hash tag, so the keys of one script
//!   are in one slot.

pub mod breaker;
mod connect;
mod ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use redis::aio::ConnectionManager;

thread_local! {
    /// Each thread's connections: (instance, client generation, connection).
    static THREAD_CONNS: std::cell::RefCell<Vec<(u64, u64, ConnectionManager)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Instance ids, for the threads' caches.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

use attitude_layers::fleet::FleetError;
pub use breaker::BreakerConfig;
pub use connect::StateError;
pub use ops::{FleetRedis, GreylistEntry, GreylistTiming, GreylistVerdict};

/// Where the shared state is and how it is used.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// `redis://host:port/db` or `rediss://...` (TLS); with Sentinel, the Redis URL's scheme,
    /// database and credentials are used for the master the sentinels name.
    pub url: String,
    /// The password (or the ACL user's), when not in the URL.
    pub password: Option<String>,
    /// The ACL user name, when not in the URL.
    pub username: Option<String>,
    /// Sentinels (`host:port`): the master is asked of them, by `master_name`.
    pub sentinels: Vec<String>,
    /// The master's name for the sentinels.
    pub master_name: String,
    /// A PEM file of the CA that signed Redis's certificate (`rediss://`), instead of the
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Every key starts with this (several fleets in one Redis).
    pub key_prefix: String,
    /// A command not answered within this long fails (and the caller falls back).
    pub timeout: Duration,
    /// Connecting (and reconnecting) gives up after this long.
    pub connect_timeout: Duration,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
}

/// The connection to the fleet's Redis, shared by every layer of the process: one multiplexed
/// connection per runtime thread (attitude's workers each run their own runtime; an operation
/// on a connection whose driver runs on another thread would cost two thread hops).
pub struct Redis {
    /// The client (and its generation: Sentinel rediscovery makes a new one).
    client: arc_swap::ArcSwap<(u64, redis::Client)>,
    manager: redis::aio::ConnectionManagerConfig,
    /// This instance, in the threads' connection caches.
    id: u64,
    /// Leases given back and not sent yet (full keys, holders).
    releases: std::sync::Mutex<Vec<(String, String)>>,
    sentinel: Option<connect::Sentinel>,
    prefix: String,
    timeout: Duration,
    breaker: breaker::Breaker,
    metrics: Metrics,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One metric handle set per operation.
#[derive(Debug)]
struct OpMetrics {
    ok: Counter,
    error: Counter,
    timeout: Counter,
    open: Counter,
    seconds: Histogram,
}

#[derive(Debug)]
struct Metrics {
    ops: [OpMetrics; Op::ALL.len()],
}

/// The operations, for metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Gcra,
    Acquire,
    Renew,
    Release,
    Greylist,
    Tally,
    Banned,
    Put,
    Get,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::Gcra,
        Op::Acquire,
        Op::Renew,
        Op::Release,
        Op::Greylist,
        Op::Tally,
        Op::Banned,
        Op::Put,
        Op::Get,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Gcra => "gcra",
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
            Op::Greylist => "greylist",
            Op::Tally => "tally",
            Op::Banned => "banned",
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

impl Metrics {
    fn register() -> Self {
        Self {
            ops: Op::ALL.map(|op| {
                let name = op.name();
                let result = |r: &'static str| {
                    metrics::counter!("attitude_state_operations_total", "op" => name, "result" => r)
                };
                OpMetrics {
                    ok: result("ok"),
                    error: result("error"),
                    timeout: result("timeout"),
                    open: result("open"),
                    seconds: metrics::histogram!("attitude_state_operation_seconds", "op" => name),
                }
            }),
        }
    }
}

impl Redis {
    /// The key for `what` (a rule or a policy's table) and `key`, in one hash slot.
    pub(crate) fn key(&self, what: &str, key: &str) -> String {
        self.tagged(&format!("{what}:{key}"))
    }

    /// `tag` as a key of its own slot (keys that start with it share the slot).
    pub(crate) fn tagged(&self, tag: &str) -> String {
        format!("{}{{{tag}}}", self.prefix)
    }

    /// Runs one operation under the breaker and the timeout, counting it.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, op: Op, call: F) -> Result<T, FleetError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let m = &self.metrics.ops[op as usize];
        if !self.breaker.admit() {
            m.open.increment(1);
            return Err(FleetError::Open);
        }
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        m.seconds.record(start.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => {
                m.ok.increment(1);
                self.breaker.success();
                Ok(value)
            }
            Ok(Err(error)) => {
                m.error.increment(1);
                let why = error.to_string();
                tracing::debug!(op = op.name(), error = %why, "shared state operation failed");
                if self.breaker.failure(&why) {
                    self.probe();
                }
                Err(FleetError::Failed(why))
            }
            Err(_) => {
                m.timeout.increment(1);
                if self.breaker.failure("timeout") {
                    self.probe();
                }
                Err(FleetError::Timeout)
            }
        }
    }

    /// While the circuit is open: `PING` every `open_for` until Redis answers (with Sentinel,
    /// the master is asked of the sentinels again before each try).
    pub(crate) fn probe(self: &Arc<Self>) {
        let redis = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(every) = redis.upgrade().map(|r| r.breaker.probe_every()) else {
                    return;
                };
                tokio::time::sleep(every).await;
                let Some(redis) = redis.upgrade() else {
                    return;
                };
                redis.rediscover().await;
                let mut conn = redis.conn();
                let ping = tokio::time::timeout(
                    redis.timeout.max(Duration::from_millis(500)),
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                if let Ok(Ok(_)) = ping {
                    redis.breaker.success();
                    return;
                }
            }
        });
    }

    /// A connection handle for one operation: this thread's (made on its first use, lazily
    /// connected by the manager, which also reconnects it).
    pub(crate) fn conn(&self) -> ConnectionManager {
        let client = self.client.load();
        let generation = client.0;
        THREAD_CONNS.with(|conns| {
            let mut conns = conns.borrow_mut();
            if let Some((_, _, conn)) = conns
                .iter()
                .find(|(id, g, _)| *id == self.id && *g == generation)
            {
                return conn.clone();
            }
            conns.retain(|(id, _, _)| *id != self.id);
            let conn =
                ConnectionManager::new_lazy_with_config(client.1.clone(), self.manager.clone())
                    .expect("a lazy connection manager (checked at start)");
            conns.push((self.id, generation, conn.clone()));
            conn
        })
    }

    /// Queues leases given back; true when the queue was empty (the caller schedules a flush).
    pub(crate) fn queue_releases(&self, leases: Vec<(String, String)>) -> bool {
        let mut queue = self.releases.lock().expect("release queue lock");
        let was_empty = queue.is_empty();
        queue.extend(leases);
        was_empty
    }

    /// The leases queued for release, taken out of the queue.
    pub(crate) fn take_releases(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.releases.lock().expect("release queue lock"))
    }

    /// Uses `client` from now on (Sentinel named another master).
    pub(crate) fn replace_client(&self, client: redis::Client) {
        let generation = self.client.load().0 + 1;
        self.client.store(Arc::new((generation, client)));
    }

    /// This store as the generic layers take it.
    pub fn fleet_store(self: &Arc<Self>) -> Arc<dyn attitude_layers::fleet::FleetStore> {
        Arc::new(FleetRedis(self.clone()))
    }

    /// True while the store is not used (the circuit is open).
    pub fn degraded(&self) -> bool {
        self.breaker.is_open()
    }
}
