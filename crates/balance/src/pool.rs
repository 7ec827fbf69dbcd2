//! The pool: discovered backends, the usable set, a p2c balancer per worker thread, checkouts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendSpec, FailureKind, Slot};
use crate::balancer::ThreadBalancer;
use crate::config::PoolConfig;
use crate::conn::{BackendCaps, BackendConn, BackendError};
use crate::discover::{ThreadDiscover, UsableSet};
use crate::health;
use crate::identity::{ClientIdentity, IdentityMode};
use crate::lease::Lease;

/// Called with what a backend offered, on every new connection and health check (AUTH offer).
pub type CapsHook = Arc<dyn Fn(&BackendCaps) + Send + Sync>;

/// A checkout request through a thread's balancer.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    pub identity: ClientIdentity,
}

/// Why no backend connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No backend is up (or every one was tried).
    #[error("no backend mail server available")]
    NoBackend,
    /// Every backend is at its connection limit, and none freed a slot in time.
    #[error("every backend is at its connection limit")]
    Busy,
    /// The chosen backend failed to open a session.
    #[error("backend {addr}: {error}")]
    Backend {
        /// The backend.
        addr: SocketAddr,
        /// What went wrong.
        error: BackendError,
    },
}

#[derive(Debug)]
struct PoolMetrics {
    usable: Gauge,
    members: Gauge,
    no_backend: Counter,
    busy: Counter,
}

pub(crate) struct Inner {
    pub(crate) config: PoolConfig,
    /// Backends per discovery source (`static`, each DNS name).
    sources: Mutex<BTreeMap<String, Vec<BackendSpec>>>,
    members: Mutex<HashMap<SocketAddr, Member>>,
    usable: watch::Sender<UsableSet>,
    pub(crate) changed: Notify,
    balancers: Mutex<HashMap<ThreadId, Arc<ThreadBalancer>>>,
    pub(crate) on_caps: Option<CapsHook>,
    pub(crate) stop: CancellationToken,
    metrics: PoolMetrics,
}

struct Member {
    backend: Arc<Backend>,
    /// Stops its health checks.
    checks: CancellationToken,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("usable", &self.usable.borrow().len())
            .finish_non_exhaustive()
    }
}

/// The backend pool; cheap to clone. See the crate docs.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool with no backends yet; call [`Pool::set_source`] (static list) or
    /// [`Pool::discover_dns`], then [`Pool::start`] from within a Tokio runtime.
    pub fn new(config: PoolConfig, on_caps: Option<CapsHook>) -> Self {
        let (usable, _) = watch::channel(UsableSet::default());
        Self {
            inner: Arc::new(Inner {
                config,
                sources: Mutex::default(),
                members: Mutex::default(),
                usable,
                changed: Notify::new(),
                balancers: Mutex::default(),
                on_caps,
                stop: CancellationToken::new(),
                metrics: PoolMetrics {
                    usable: metrics::gauge!("attitude_backends_usable"),
                    members: metrics::gauge!("attitude_backends"),
                    no_backend: metrics::counter!("attitude_backend_unavailable_total", "reason" => "none_up"),
                    busy: metrics::counter!("attitude_backend_unavailable_total", "reason" => "busy"),
                },
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Replaces the backends one discovery source knows. Backends that appear start serving
    /// (after their first health check, if checks are on); backends that disappear get no new
    /// transactions, but the transactions they are serving finish.
    pub fn set_source(&self, source: &str, specs: Vec<BackendSpec>) {
        self.inner.set_source(source, specs);
    }

    /// Starts the controller (usable set, ejection expiry, idle expiry) and the health checks.
    pub fn start(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.control().await });
        self.inner.changed.notify_one();
    }

    /// Stops health checks, discovery and the controller.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Whether some backend may take a transaction now.
    pub fn available(&self) -> bool {
        !self.inner.usable.borrow().is_empty()
    }

    /// Every known backend (for status and tests).
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        let members = self.inner.members.lock().expect("members lock");
        let mut all: Vec<_> = members.values().map(|m| m.backend.clone()).collect();
        all.sort_by_key(|b| b.addr());
        all
    }

    /// Waits until the usable set changes (tests, status).
    pub async fn changed(&self) {
        let mut rx = self.inner.usable.subscribe();
        let _ = rx.changed().await;
    }

    /// A backend connection for a transaction of `identity`'s client. With `exclude` empty the
    /// backend is chosen by this thread's p2c balancer; otherwise (failover) the least loaded
    /// usable backend not in `exclude`.
    pub async fn checkout(
        &self,
        identity: &ClientIdentity,
        exclude: &[SocketAddr],
    ) -> Result<Lease, CheckoutError> {
        let inner = &self.inner;
        if exclude.is_empty() {
            if !self.available() {
                inner.metrics.no_backend.increment(1);
                return Err(CheckoutError::NoBackend);
            }
            let balancer = inner.balancer();
            let request = Checkout {
                identity: identity.clone(),
            };
            // Usually a backend is ready at once: no timer. Otherwise wait, within a limit.
            let mut choose = std::pin::pin!(balancer.choose(&request));
            let chosen = match futures::poll!(&mut choose) {
                Poll::Ready(chosen) => chosen,
                Poll::Pending => match timeout(inner.config.queue_timeout, choose).await {
                    Ok(chosen) => chosen,
                    Err(_elapsed) => {
                        inner.metrics.busy.increment(1);
                        return Err(CheckoutError::Busy);
                    }
                },
            };
            let lease = match chosen {
                Ok(checkout) => checkout.await,
                Err(error) => Err(error),
            };
            return lease.map_err(|error| match error.downcast::<CheckoutError>() {
                Ok(error) => *error,
                Err(other) => {
                    tracing::warn!(error = %other, "backend balancer failed");
                    CheckoutError::NoBackend
                }
            });
        }
        let choice = inner
            .usable
            .borrow()
            .iter()
            .filter(|b| !exclude.contains(&b.addr()))
            .min_by(|a, b| a.load().total_cmp(&b.load()))
            .cloned();
        match choice {
            Some(backend) => inner.clone().acquire(backend, identity.clone(), None).await,
            None => Err(CheckoutError::NoBackend),
        }
    }
}

impl Inner {
    fn set_source(self: &Arc<Self>, source: &str, specs: Vec<BackendSpec>) {
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
                tokio::spawn(health::run(self.clone(), backend.clone(), checks.clone()));
            }
            tracing::info!(backend = %addr, source, weight = backend.weight(), "backend added");
            members.insert(addr, Member { backend, checks });
        }
        self.metrics.members.set(members.len() as f64);
        drop(members);
        self.publish();
        self.changed.notify_one();
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
        self.metrics.usable.set(usable.len() as f64);
        self.usable.send_if_modified(|current| {
            let same = current.len() == usable.len()
                && current.iter().zip(&usable).all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                *current = UsableSet::new(usable);
            }
            !same
        });
    }

    /// The controller: ejections that end, idle connections that expire, usable-set updates.
    async fn control(self: Arc<Self>) {
        let mut next_ejection_end: Option<std::time::Instant> = None;
        loop {
            // Idle connections are looked at every second; an ejection ends on time.
            let mut wake = std::time::Instant::now() + Duration::from_secs(1);
            if let Some(end) = next_ejection_end {
                wake = wake.min(end);
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = std::time::Instant::now();
            let members: Vec<Arc<Backend>> = self
                .members
                .lock()
                .expect("members lock")
                .values()
                .map(|m| m.backend.clone())
                .collect();
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

    /// This thread's balancer, made on first use.
    fn balancer(self: &Arc<Self>) -> Arc<ThreadBalancer> {
        let me = std::thread::current().id();
        let mut balancers = self.balancers.lock().expect("balancers lock");
        balancers
            .entry(me)
            .or_insert_with(|| {
                Arc::new(ThreadBalancer::new(ThreadDiscover::new(
                    self.clone(),
                    self.usable.subscribe(),
                )))
            })
            .clone()
    }

    /// Takes an idle connection of this thread, or opens one (waiting for a slot under the
    /// backend's connection limit), and gives it the client's identity.
    pub(crate) async fn acquire(
        self: Arc<Self>,
        backend: Arc<Backend>,
        identity: ClientIdentity,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Lease, CheckoutError> {
        let config = &self.config;
        let addr = backend.addr();
        if config.reuse && backend.shareable() {
            while let Some(mut conn) = backend.take_idle(config) {
                if backend.identity() == IdentityMode::Xclient
                    && let Err(error) = conn
                        .xclient(&identity, &config.helo_name, config.greeting_timeout)
                        .await
                {
                    if matches!(&error, BackendError::Refused(r) if r.is_permanent()) {
                        backend.set_xclient_once(config);
                        break;
                    }
                    tracing::debug!(backend = %addr, %error, "pooled connection refused XCLIENT; closing it");
                    continue;
                }
                backend.metrics.pool_hit.increment(1);
                return Ok(Lease::new(self.clone(), backend, conn, true));
            }
        }
        backend.metrics.pool_miss.increment(1);
        let permit = match (permit, &backend.slots) {
            (Some(p), _) => Some(p),
            (None, Some(slots)) => {
                if slots.available_permits() == 0 {
                    backend.evict_idle();
                }
                match timeout(config.queue_timeout, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => return Err(CheckoutError::Busy),
                }
            }
            (None, None) => None,
        };
        let preamble = (backend.identity() == IdentityMode::Proxy).then(|| identity.proxy_header());
        let opened = async {
            let mut conn = BackendConn::open(
                addr,
                &config.helo_name,
                config.connect_timeout,
                config.greeting_timeout,
                preamble.as_deref(),
                config.tls.as_ref(),
            )
            .await?;
            if let Some(hook) = &self.on_caps {
                hook(&conn.caps());
            }
            if backend.identity() == IdentityMode::Xclient
                && !conn
                    .xclient(&identity, &config.helo_name, config.greeting_timeout)
                    .await?
            {
                tracing::warn!(backend = %addr, "identity = \"xclient\" but the backend does not offer XCLIENT; it sees attitude's address");
            }
            Ok::<_, BackendError>(conn)
        }
        .await;
        match opened {
            Ok(mut conn) => {
                conn.slot = Some(Slot::new(backend.clone(), permit));
                Ok(Lease::new(self.clone(), backend, Box::new(conn), false))
            }
            Err(error) => {
                if let BackendError::Refused(reply) = &error
                    && backend.identity() == IdentityMode::Xclient
                    && reply.code() != 421
                {
                    tracing::error!(backend = %addr, %error, "XCLIENT refused: allow attitude's address in the backend's smtpd_authorized_xclient_hosts");
                }
                self.report_failure(&backend, FailureKind::from(&error));
                Err(CheckoutError::Backend { addr, error })
            }
        }
    }
}
