//! One backend mail server: its health, its outlier state, its load, its idle connections and its
//! metrics. Shared by every worker thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::time::Instant;

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::caps::BackendCaps;
use crate::config::{OutlierConfig, PoolConfig};
use crate::conn::{BackendConn, BackendError};
use crate::identity::IdentityMode;

/// Where a backend comes from and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Relative share of transactions (at least 1).
    pub weight: u32,
    /// How it learns the real client.
    pub identity: IdentityMode,
}

/// Why a backend failed, for metrics and for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect failed.
    Connect,
    /// No reply in time.
    Timeout,
    /// The connection broke or closed.
    Closed,
    /// The greeting, EHLO or XCLIENT was refused.
    Refused,
    /// A 421 reply: the backend is closing.
    ServiceUnavailable,
    /// A 4xx reply to MAIL.
    Transient,
    /// Something that is not SMTP.
    Protocol,
}

impl FailureKind {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Closed => "closed",
            FailureKind::Refused => "refused",
            FailureKind::ServiceUnavailable => "421",
            FailureKind::Transient => "4xx",
            FailureKind::Protocol => "protocol",
        }
    }

    const ALL: [FailureKind; 7] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Closed,
        FailureKind::Refused,
        FailureKind::ServiceUnavailable,
        FailureKind::Transient,
        FailureKind::Protocol,
    ];
}

impl From<&BackendError> for FailureKind {
    fn from(e: &BackendError) -> Self {
        match e {
            BackendError::Connect { .. } => FailureKind::Connect,
            BackendError::Timeout(_) => FailureKind::Timeout,
            BackendError::Io(_) | BackendError::Closed => FailureKind::Closed,
            BackendError::Protocol(_) | BackendError::Tls(_) => FailureKind::Protocol,
            BackendError::Refused(r) if r.code() == 421 => FailureKind::ServiceUnavailable,
            BackendError::Refused(_) => FailureKind::Refused,
        }
    }
}

/// Per-backend metric handles (label `backend`).
#[derive(Debug)]
pub(crate) struct BackendMetrics {
    pub up: Gauge,
    pub ejected: Gauge,
    pub weight: Gauge,
    pub checks_ok: Counter,
    pub checks_failed: Counter,
    pub open: Gauge,
    pub idle: Gauge,
    pub in_flight: Gauge,
    pub transaction_seconds: Histogram,
    pub failures: Vec<Counter>,
    pub failovers: Counter,
    pub ejections: Counter,
    pub pool_hit: Counter,
    pub pool_miss: Counter,
}

impl BackendMetrics {
    fn register(pool: &str, addr: SocketAddr) -> Self {
        let b = addr.to_string();
        let p = pool.to_owned();
        let checks = |result: &'static str| metrics::counter!("attitude_backend_health_checks_total", "pool" => p.clone(), "backend" => b.clone(), "result" => result);
        let pool = |result: &'static str| metrics::counter!("attitude_backend_pool_total", "pool" => p.clone(), "backend" => b.clone(), "result" => result);
        Self {
            up: metrics::gauge!("attitude_backend_up", "pool" => p.clone(), "backend" => b.clone()),
            ejected: metrics::gauge!("attitude_backend_ejected", "pool" => p.clone(), "backend" => b.clone()),
            weight: metrics::gauge!("attitude_backend_weight", "pool" => p.clone(), "backend" => b.clone()),
            checks_ok: checks("ok"),
            checks_failed: checks("failed"),
            open: metrics::gauge!("attitude_backend_connections_open", "pool" => p.clone(), "backend" => b.clone()),
            idle: metrics::gauge!("attitude_backend_connections_idle", "pool" => p.clone(), "backend" => b.clone()),
            in_flight: metrics::gauge!("attitude_backend_in_flight", "pool" => p.clone(), "backend" => b.clone()),
            transaction_seconds: metrics::histogram!("attitude_backend_transaction_seconds", "pool" => p.clone(), "backend" => b.clone()),
            failures: FailureKind::ALL
                .iter()
                .map(|k| {
                    metrics::counter!("attitude_backend_failures_total", "pool" => p.clone(), "backend" => b.clone(), "kind" => k.label())
                })
                .collect(),
            failovers: metrics::counter!("attitude_backend_failovers_total", "pool" => p.clone(), "backend" => b.clone()),
            ejections: metrics::counter!("attitude_backend_ejections_total", "pool" => p.clone(), "backend" => b.clone()),
            pool_hit: pool("hit"),
            pool_miss: pool("miss"),
        }
    }
}

/// A connection's place in its backend's count of open connections and, with a limit, its
/// permit; given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    backend: Arc<Backend>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    fn new(backend: Arc<Backend>, permit: Option<OwnedSemaphorePermit>) -> Self {
        let n = backend.open.fetch_add(1, Ordering::Relaxed) + 1;
        backend.metrics.open.set(n as f64);
        Self {
            backend,
            _permit: permit,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.backend.open.fetch_sub(1, Ordering::Relaxed) - 1;
        self.backend.metrics.open.set(n as f64);
    }
}

/// A backend connection as the pool keeps it: the connection, the transactions it served, and
/// its place in its backend's count of open connections (and connection limit).
#[derive(Debug)]
pub(crate) struct PooledConn {
    pub(crate) conn: BackendConn,
    /// Transactions completed on this connection.
    pub(crate) transactions: u32,
    _slot: Slot,
}

impl PooledConn {
    /// `conn`, counted in `backend`'s open connections, holding `permit` under its limit.
    pub(crate) fn new(
        conn: BackendConn,
        backend: Arc<Backend>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            conn,
            transactions: 0,
            _slot: Slot::new(backend, permit),
        }
    }
}

/// An idle connection in the pool, with the thread whose runtime owns its socket.
#[derive(Debug)]
struct Idle {
    conn: Box<PooledConn>,
    thread: ThreadId,
    since: Instant,
}

#[derive(Debug, Default)]
struct Health {
    /// Checks in a row that passed / failed.
    passed: u32,
    failed: u32,
    checked: bool,
}

#[derive(Debug, Default)]
struct Outlier {
    /// Failures in a row (any success resets).
    consecutive: u32,
    /// Ejections in a row (a success after coming back resets): the backoff doubles with each.
    ejections: u32,
    until: Option<Instant>,
}

/// A backend mail server as the pool sees it.
#[derive(Debug)]
pub struct Backend {
    spec: BackendSpec,
    up: AtomicBool,
    ejected: AtomicBool,
    /// No longer discovered: its connections are not pooled, it gets no new transactions.
    removed: AtomicBool,
    /// It refused a second XCLIENT on a connection (Postfix checks it against the address the
    /// first one set): its XCLIENT connections each serve one session.
    xclient_once: AtomicBool,
    /// What its last EHLO offered (`None`: not seen yet).
    offered: Mutex<Option<BackendCaps>>,
    health: Mutex<Health>,
    outlier: Mutex<Outlier>,
    in_flight: AtomicUsize,
    open: AtomicUsize,
    idle: Mutex<Vec<Idle>>,
    /// Balancer endpoints waiting at the connection limit: an idle connection may serve them.
    idle_waiters: Mutex<Vec<std::task::Waker>>,
    pub(crate) slots: Option<Arc<Semaphore>>,
    pub(crate) metrics: BackendMetrics,
}

impl Backend {
    /// Records what its EHLO offered (on every new connection and health check).
    pub(crate) fn learn(&self, caps: BackendCaps) {
        let mut offered = self.offered.lock().expect("offered lock");
        if offered
            .is_none_or(|o| o.extensions != caps.extensions || o.size_limit != caps.size_limit)
        {
            tracing::info!(backend = %self.spec.addr, extensions = %caps.extensions, size = ?caps.size_limit, "backend offers");
        }
        *offered = Some(caps);
    }

    /// What its last EHLO offered (`None`: not seen yet).
    pub fn offered(&self) -> Option<BackendCaps> {
        *self.offered.lock().expect("offered lock")
    }

    /// Its EHLO was seen, or a health check found it down: nothing more to learn at start.
    pub(crate) fn settled(&self) -> bool {
        self.offered().is_some() || self.health.lock().expect("health lock").checked
    }

    pub(crate) fn new(spec: BackendSpec, config: &PoolConfig) -> Self {
        let metrics = BackendMetrics::register(&config.name, spec.addr);
        metrics.up.set(1.0);
        metrics.ejected.set(0.0);
        metrics.weight.set(f64::from(spec.weight));
        Self {
            up: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            xclient_once: AtomicBool::new(false),
            offered: Mutex::default(),
            health: Mutex::default(),
            outlier: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            idle: Mutex::default(),
            idle_waiters: Mutex::default(),
            slots: (config.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(config.max_connections))),
            metrics,
            spec,
        }
    }

    /// Address.
    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }

    /// Weight.
    pub fn weight(&self) -> u32 {
        self.spec.weight
    }

    /// Identity forwarding.
    pub fn identity(&self) -> IdentityMode {
        self.spec.identity
    }

    pub(crate) fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// Passes its health checks (or has none).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// May get new transactions.
    pub fn is_usable(&self) -> bool {
        self.is_up() && !self.is_ejected() && !self.removed.load(Ordering::Relaxed)
    }

    /// Transactions in flight on it (all threads).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The p2c load: transactions in flight ÷ weight (least outstanding transactions). A slow
    /// backend holds its transactions longer, so it gets fewer new ones.
    pub fn load(&self) -> f64 {
        self.in_flight() as f64 / f64::from(self.spec.weight.max(1))
    }

    pub(crate) fn begin(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.in_flight.set(n as f64);
    }

    pub(crate) fn end(&self) {
        let n = self.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.in_flight.set(n as f64);
    }

    /// A finished transaction (from checkout to the backend's reply to end of data).
    pub(crate) fn observe(&self, total: Duration) {
        self.metrics.transaction_seconds.record(total.as_secs_f64());
    }

    /// A connection of this thread from the idle pool, if one is fresh and still open.
    pub(crate) fn take_idle(&self, config: &PoolConfig) -> Option<Box<PooledConn>> {
        let me = std::thread::current().id();
        let mut idle = self.idle.lock().expect("idle lock");
        let now = Instant::now();
        let mut found = None;
        // Newest first: the one least likely to have been timed out by the backend.
        while let Some(pos) = idle.iter().rposition(|i| i.thread == me) {
            let entry = idle.remove(pos);
            let fresh = now.duration_since(entry.since) < config.idle_timeout
                && now.duration_since(entry.conn.conn.opened) < config.max_age
                && entry.conn.conn.is_open();
            if fresh {
                found = Some(entry.conn);
                break;
            }
            drop(entry.conn);
        }
        self.metrics.idle.set(idle.len() as f64);
        found
    }

    /// Closes the oldest idle connection (of any thread), freeing its slot under the connection
    /// limit for a thread that has none idle. `false` when none is idle.
    pub(crate) fn evict_idle(&self) -> bool {
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.is_empty() {
            return false;
        }
        let oldest = idle.remove(0);
        self.metrics.idle.set(idle.len() as f64);
        drop(idle);
        drop(oldest);
        true
    }

    /// Wakes `waker` when a connection next goes idle (an endpoint at the connection limit).
    pub(crate) fn wake_on_idle(&self, waker: &std::task::Waker) {
        let mut waiters = self.idle_waiters.lock().expect("waiters lock");
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// Whether this thread has an idle connection (a hint for readiness).
    pub(crate) fn has_idle_here(&self) -> bool {
        let me = std::thread::current().id();
        self.idle
            .lock()
            .expect("idle lock")
            .iter()
            .any(|i| i.thread == me)
    }

    /// Returns a connection in a clean state (no transaction open) to the pool, or closes it
    /// when the pool is full, the connection is too old or has served enough transactions.
    pub(crate) fn put_idle(&self, conn: Box<PooledConn>, config: &PoolConfig) {
        let keep = config.reuse
            && self.is_usable()
            && conn.transactions < config.max_transactions
            && conn.conn.opened.elapsed() < config.max_age;
        if !keep {
            return self.retire(conn, config);
        }
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() >= config.max_idle {
            // Make room by closing the oldest.
            let oldest = idle.remove(0);
            self.retire(oldest.conn, config);
        }
        idle.push(Idle {
            conn,
            thread: std::thread::current().id(),
            since: Instant::now(),
        });
        self.metrics.idle.set(idle.len() as f64);
        drop(idle);
        for waker in std::mem::take(&mut *self.idle_waiters.lock().expect("waiters lock")) {
            waker.wake();
        }
    }

    /// Closes every idle connection (the backend went down, was ejected or removed).
    pub(crate) fn clear_idle(&self, config: &PoolConfig) {
        let drained: Vec<Idle> = std::mem::take(&mut *self.idle.lock().expect("idle lock"));
        self.metrics.idle.set(0.0);
        for entry in drained {
            self.retire(entry.conn, config);
        }
    }

    /// Closes idle connections that waited longer than `idle_timeout`.
    pub(crate) fn expire_idle(&self, config: &PoolConfig) {
        let mut idle = self.idle.lock().expect("idle lock");
        let now = Instant::now();
        let (stale, kept): (Vec<Idle>, Vec<Idle>) =
            std::mem::take(&mut *idle).into_iter().partition(|i| {
                now.duration_since(i.since) >= config.idle_timeout
                    || now.duration_since(i.conn.conn.opened) >= config.max_age
            });
        *idle = kept;
        self.metrics.idle.set(idle.len() as f64);
        drop(idle);
        for entry in stale {
            self.retire(entry.conn, config);
        }
    }

    /// Says QUIT in the background (a polite close the backend does not log as lost).
    pub(crate) fn retire(&self, conn: Box<PooledConn>, config: &PoolConfig) {
        let limit = config.quit_timeout;
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let PooledConn { conn, _slot, .. } = *conn;
                conn.quit(limit).await;
                drop(_slot);
            });
        }
    }

    /// Whether a connection to it may serve another client after this one.
    pub(crate) fn shareable(&self) -> bool {
        match self.identity() {
            IdentityMode::None | IdentityMode::Xforward => true,
            IdentityMode::Xclient => !self.xclient_once.load(Ordering::Relaxed),
            IdentityMode::Proxy => false,
        }
    }

    /// A second XCLIENT was refused: connections serve one session each from now on.
    pub(crate) fn set_xclient_once(&self, config: &PoolConfig) {
        if !self.xclient_once.swap(true, Ordering::Relaxed) {
            tracing::info!(
                backend = %self.addr(),
                "backend accepts XCLIENT once per connection; its connections now serve one session each"
            );
            // Idle connections carry someone else's identity.
            self.clear_idle(config);
        }
    }

    pub(crate) fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// A health check result; `true` when the up/down state changed.
    pub(crate) fn record_check(&self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok {
            self.metrics.checks_ok.increment(1);
        } else {
            self.metrics.checks_failed.increment(1);
        }
        let mut h = self.health.lock().expect("health lock");
        let first = !h.checked;
        h.checked = true;
        if ok {
            h.passed += 1;
            h.failed = 0;
        } else {
            h.failed += 1;
            h.passed = 0;
        }
        let was_up = self.is_up();
        // The first check decides at once: a backend that is down at start is not offered
        // `fall` transactions to fail first.
        let now_up = if first {
            ok
        } else if was_up {
            h.failed < fall
        } else {
            h.passed >= rise
        };
        if now_up != was_up {
            self.up.store(now_up, Ordering::Relaxed);
            self.metrics.up.set(if now_up { 1.0 } else { 0.0 });
            tracing::warn!(backend = %self.addr(), up = now_up, "backend health changed");
            return true;
        }
        false
    }

    /// A success: clears the failure streak and, after an ejection, the backoff.
    pub(crate) fn record_success(&self) {
        let mut o = self.outlier.lock().expect("outlier lock");
        o.consecutive = 0;
        if o.until.is_none() {
            o.ejections = 0;
        }
    }

    /// A failure. Returns the ejection deadline if this failure should eject the backend;
    /// the pool decides (it knows how many are ejected already).
    pub(crate) fn record_failure(
        &self,
        kind: FailureKind,
        config: &OutlierConfig,
    ) -> Option<Duration> {
        self.metrics.failures[FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is listed")]
        .increment(1);
        let mut o = self.outlier.lock().expect("outlier lock");
        o.consecutive += 1;
        if config.consecutive_failures == 0
            || o.consecutive < config.consecutive_failures
            || o.until.is_some()
        {
            return None;
        }
        let backoff = config
            .base_ejection
            .saturating_mul(1 << o.ejections.min(16))
            .min(config.max_ejection);
        Some(backoff)
    }

    /// Ejects for `backoff` (the pool allowed it).
    pub(crate) fn eject(&self, backoff: Duration) -> Instant {
        let mut o = self.outlier.lock().expect("outlier lock");
        let until = Instant::now() + backoff;
        o.until = Some(until);
        o.ejections += 1;
        o.consecutive = 0;
        self.ejected.store(true, Ordering::Relaxed);
        self.metrics.ejected.set(1.0);
        self.metrics.ejections.increment(1);
        tracing::warn!(backend = %self.addr(), ?backoff, "backend ejected after repeated failures");
        until
    }

    /// Ends an ejection whose time is over; returns the deadline still ahead otherwise.
    pub(crate) fn ejection_over(&self, now: Instant) -> Option<Instant> {
        let mut o = self.outlier.lock().expect("outlier lock");
        match o.until {
            Some(until) if until <= now => {
                o.until = None;
                self.ejected.store(false, Ordering::Relaxed);
                self.metrics.ejected.set(0.0);
                tracing::info!(backend = %self.addr(), "backend back from ejection");
                None
            }
            other => other,
        }
    }
}
