//! The registry: which backends exist (per discovery source), their health and outlier state,
//! and the usable set the balancers see. It owns the members; everything else gets a narrow
//! handle: the balancers a `watch` of the usable set, health checks a `Notify`, leases and the
//! connector [`Registry::report_failure`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use metrics::Gauge;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendSpec, FailureKind};
use crate::config::PoolConfig;
use crate::health::{self, Checker};

/// The backends that may take new transactions (up, not ejected), sorted by address.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsableSet(Arc<Vec<Arc<Backend>>>);

impl UsableSet {
    fn new(backends: Vec<Arc<Backend>>) -> Self {
        Self(Arc::new(backends))
    }
}

impl Deref for UsableSet {
    type Target = [Arc<Backend>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[derive(Debug)]
struct Member {
    backend: Arc<Backend>,
    /// Stops its health checks.
    checks: CancellationToken,
}

/// The backends and their state; see the module docs.
#[derive(Debug)]
pub(crate) struct Registry {
    config: Arc<PoolConfig>,
    checker: Arc<Checker>,
    /// Backends per discovery source (`static`, each DNS name).
    sources: Mutex<BTreeMap<String, Vec<BackendSpec>>>,
    members: Mutex<HashMap<SocketAddr, Member>>,
    usable: watch::Sender<UsableSet>,
    /// Something changed (a health result, a source): the controller recomputes.
    changed: Arc<Notify>,
    stop: CancellationToken,
    usable_gauge: Gauge,
    members_gauge: Gauge,
}

impl Registry {
    pub(crate) fn new(
        config: Arc<PoolConfig>,
        checker: Arc<Checker>,
        stop: CancellationToken,
    ) -> Self {
        let (usable, _) = watch::channel(UsableSet::default());
        Self {
            usable_gauge: metrics::gauge!("attitude_backends_usable", "pool" => config.name.clone()),
            members_gauge: metrics::gauge!("attitude_backends", "pool" => config.name.clone()),
            config,
            checker,
            sources: Mutex::default(),
            members: Mutex::default(),
            usable,
            changed: Arc::new(Notify::new()),
            stop,
        }
    }

    /// The usable set now.
    pub(crate) fn usable(&self) -> watch::Ref<'_, UsableSet> {
        self.usable.borrow()
    }

    /// A view of the usable set that sees every change (one per balancer).
    pub(crate) fn subscribe(&self) -> watch::Receiver<UsableSet> {
        self.usable.subscribe()
    }

    /// Asks the controller to look at the members again.
    pub(crate) fn touch(&self) {
        self.changed.notify_one();
    }

    /// Every known backend, by address.
    pub(crate) fn backends(&self) -> Vec<Arc<Backend>> {
        let members = self.members.lock().expect("members lock");
        let mut all: Vec<_> = members.values().map(|m| m.backend.clone()).collect();
        all.sort_by_key(|b| b.addr());
        all
    }

    /// Replaces the backends one discovery source knows (see `Pool::set_source`).
    pub(crate) fn set_source(&self, source: &str, specs: Vec<BackendSpec>) {
        let mut sources = self.sources.lock().expect("sources lock");
        sources.insert(source.to_owned(), specs);
        // The union by address; the first source (in name order) that names one decides its
        // weight and identity.
        let mut wanted: HashMap<SocketAddr, BackendSpec> = HashMap::new();
        for spec in sources.values().flatten() {
            wanted.entry(spec.addr).or_insert_with(|| spec.clone());
        }
        drop(sources);
        let mut members = self.members.lock().expect("members lock");
        let gone: Vec<SocketAddr> = members
            .iter()
            .filter(|(addr, m)| wanted.get(addr) != Some(m.backend.spec()))
            .map(|(addr, _)| *addr)
            .collect();
        for addr in gone {
            let member = members.remove(&addr).expect("listed above");
            member.backend.set_removed();
            member.checks.cancel();
            member.backend.clear_idle(&self.config);
            tracing::info!(backend = %addr, source, "backend removed");
        }
        for (addr, spec) in wanted {
            if members.contains_key(&addr) {
                continue;
            }
            let backend = Arc::new(Backend::new(spec, &self.config));
            let checks = self.stop.child_token();
            if self.config.health.enabled && tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(health::run(
                    self.checker.clone(),
                    backend.clone(),
                    self.changed.clone(),
                    checks.clone(),
                ));
            }
            tracing::info!(backend = %addr, source, weight = backend.weight(), "backend added");
            members.insert(addr, Member { backend, checks });
        }
        self.members_gauge.set(members.len() as f64);
        drop(members);
        self.publish();
        self.touch();
    }

    /// Recomputes the usable set and tells the balancers when it changed.
    fn publish(&self) {
        let members = self.members.lock().expect("members lock");
        let mut usable: Vec<Arc<Backend>> = members
            .values()
            .map(|m| m.backend.clone())
            .filter(|b| b.is_usable())
            .collect();
        for m in members.values().filter(|m| !m.backend.is_usable()) {
            m.backend.clear_idle(&self.config);
        }
        drop(members);
        usable.sort_by_key(|b| b.addr());
        self.usable_gauge.set(usable.len() as f64);
        self.usable.send_if_modified(|current| {
            let same = current.len() == usable.len()
                && current.iter().zip(&usable).all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                *current = UsableSet::new(usable);
            }
            !same
        });
    }

    /// The controller, until the pool stops: ejections that end, idle connections that
    /// expire, usable-set updates.
    pub(crate) async fn control(self: Arc<Self>) {
        let mut next_ejection_end: Option<Instant> = None;
        loop {
            // Idle connections are looked at every second; an ejection ends on time.
            let mut wake = Instant::now() + Duration::from_secs(1);
            if let Some(end) = next_ejection_end {
                wake = wake.min(end);
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    // A stopped pool (removed by a reload) counts no backends; a pool that
                    // replaced it under the same name publishes its own within a second.
                    self.members_gauge.set(0.0);
                    self.usable_gauge.set(0.0);
                    return;
                }
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            let members = self.backends();
            next_ejection_end = None;
            for b in &members {
                if let Some(end) = b.ejection_over(now) {
                    next_ejection_end = Some(next_ejection_end.map_or(end, |n| n.min(end)));
                }
                b.expire_idle(&self.config);
            }
            self.publish();
        }
    }

    /// Counts a failure; ejects the backend when it keeps failing, unless that would eject
    /// more than `max_ejected_percent` of the backends that are up.
    pub(crate) fn report_failure(&self, backend: &Arc<Backend>, kind: FailureKind) {
        let Some(backoff) = backend.record_failure(kind, &self.config.outlier) else {
            return;
        };
        let members = self.members.lock().expect("members lock");
        let up = members.values().filter(|m| m.backend.is_up()).count();
        let ejected = members.values().filter(|m| m.backend.is_ejected()).count();
        drop(members);
        if (ejected + 1) * 100 <= up * self.config.outlier.max_ejected_percent as usize {
            backend.eject(backoff);
            self.publish();
        } else {
            tracing::warn!(
                backend = %backend.addr(),
                "backend keeps failing but is not ejected: too many are ejected already"
            );
        }
    }
}
