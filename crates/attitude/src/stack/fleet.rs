//! `[state] redis`: the fleet's shared memory, connected once per process and handed to what
//! remembers (`stack::state`): the rate rules, the per-client session leases, the AUTH guard,
//! the greylist. The policies' operations reach `attitude_state::Redis` through
//! [`PolicyRedis`], the generic layers' through `Redis::fleet_store`. The greylist file of a
//! process that ran alone is imported into Redis once ([`Fleet::import_greylist`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use attitude_layers::fleet::{FleetFuture, FleetStore};
use attitude_layers::keyed_concurrency::LeaseTerms;
use attitude_policy::fleet::FleetPolicies;
use attitude_policy::greylist::{FleetGreylist, Greylist, Timing, Verdict};
use attitude_state::{
    BreakerConfig, GreylistEntry, GreylistTiming, GreylistVerdict, Redis, StateConfig,
};

use crate::config;

/// The fleet's store, as each user takes it.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    /// For the generic layers (GCRA, leases).
    pub store: Arc<dyn FleetStore>,
    /// For the policies (AUTH tallies, verdicts).
    pub policies: Arc<dyn FleetPolicies>,
    /// For the greylist.
    pub greylist: Arc<dyn FleetGreylist>,
    /// How sessions' leases are held.
    pub leases: LeaseTerms,
    redis: Arc<Redis>,
}

impl Fleet {
    /// Imports the greylist file of the process's store into Redis (the first start with
    /// `[state] redis`: what the replicas learnt alone is not lost), then renames the file to
    /// `*.imported` so that it is imported once. In the background: sessions do not wait.
    pub(crate) fn import_greylist(&self, greylist: &Greylist, file: &Path) {
        let store = greylist.snapshot();
        if store.is_empty() {
            return;
        }
        let entries: Vec<GreylistEntry> = store
            .triplets()
            .map(|(n, s, r, first, passed)| {
                GreylistEntry::Triplet(n.into(), s.into(), r.into(), first, passed)
            })
            .chain(
                store
                    .clients()
                    .map(|(n, passes, until)| GreylistEntry::Client(n.into(), passes, until)),
            )
            .collect();
        let timing = greylist_timing(greylist.timing());
        let (redis, file) = (self.redis.clone(), file.to_owned());
        tokio::spawn(async move {
            let total = entries.len();
            match redis.import_greylist(entries, timing).await {
                Ok(imported) => {
                    let done = file.with_extension("imported");
                    let renamed = std::fs::rename(&file, &done);
                    tracing::info!(file = %file.display(), entries = total, imported, renamed_to = %done.display(), ok = renamed.is_ok(), "greylist file imported into Redis");
                }
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "greylist file not imported into Redis; it will be tried again at the next start")
                }
            }
        });
    }
}

fn greylist_timing(timing: &Timing) -> GreylistTiming {
    GreylistTiming {
        delay: timing.delay,
        retry_window: timing.retry_window,
        pass_ttl: timing.pass_ttl,
        allowlist_after: timing.allowlist_after,
        allowlist_ttl: timing.allowlist_ttl,
    }
}

/// Connects to `[state] redis`, if set (see `attitude_state::connect` for what is fatal).
pub(crate) async fn connect(state: &config::State) -> Result<Option<Fleet>, String> {
    let Some(url) = &state.redis else {
        return Ok(None);
    };
    let redis = Redis::connect(StateConfig {
        url: url.clone(),
        password: state.password()?,
        username: state.username.clone(),
        sentinels: state.sentinels.clone(),
        master_name: state.master_name.clone(),
        ca_file: state.ca_file.clone(),
        key_prefix: state.key_prefix.clone(),
        timeout: state.timeout,
        connect_timeout: state.connect_timeout,
        breaker: BreakerConfig {
            failures: state.breaker_failures,
            open_for: state.breaker_open,
        },
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(Some(Fleet {
        store: redis.fleet_store(),
        policies: Arc::new(PolicyRedis(redis.clone())),
        greylist: Arc::new(PolicyRedis(redis.clone())),
        redis,
        leases: LeaseTerms {
            ttl: state.lease_ttl,
            refusal_memory: state.refusal_memory,
            replica: replica_name(),
        },
    }))
}

/// This process's name among the fleet's lease holders: host (the pod's name), process id and
/// start time, so a restarted pod never renews its predecessor's leases.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "attitude".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}:{}:{started}", std::process::id())
}

/// The policies' operations over Redis.
#[derive(Debug)]
struct PolicyRedis(Arc<Redis>);

impl FleetGreylist for PolicyRedis {
    fn greylist(
        &self,
        network: &str,
        sender: &str,
        recipient: &str,
        timing: &Timing,
    ) -> FleetFuture<Verdict> {
        let ask = self
            .0
            .greylist(network, sender, recipient, greylist_timing(timing));
        Box::pin(async move {
            Ok(match ask.await? {
                GreylistVerdict::Allowlisted => Verdict::Allowlisted,
                GreylistVerdict::Pass => Verdict::Pass,
                GreylistVerdict::Defer(wait) => Verdict::Defer(wait),
            })
        })
    }
}

impl FleetPolicies for PolicyRedis {
    fn tally(
        &self,
        subject: &str,
        limit: u32,
        window: Duration,
        ban: Duration,
        dry_run: bool,
    ) -> FleetFuture<bool> {
        self.0.tally(subject, limit, window, ban, dry_run)
    }

    fn banned(&self, subjects: Vec<String>) -> FleetFuture<Vec<Option<Duration>>> {
        self.0.banned(subjects)
    }

    fn put(&self, table: &str, key: &str, value: String, ttl: Duration) -> FleetFuture<()> {
        self.0.put(table, key, value, ttl)
    }

    fn get(&self, table: &str, key: &str) -> FleetFuture<Option<(String, Duration)>> {
        self.0.get(table, key)
    }
}
