//! Discovery: the usable set as a tower `Discover` stream per balancer, and DNS discovery
//! (A/AAAA or SRV, re-resolved on an interval) feeding the pool.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::{PollSemaphore, ReusableBoxFuture};
use tower::discover::Change;
use tower::load::Load;
use tower_service::Service;

use crate::backend::{Backend, BackendSpec};
use crate::identity::IdentityMode;
use crate::lease::Lease;
use crate::pool::{Checkout, Inner, Pool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The backends that may take new transactions (up, not ejected), sorted by address.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsableSet(Arc<Vec<Arc<Backend>>>);

impl UsableSet {
    pub(crate) fn new(backends: Vec<Arc<Backend>>) -> Self {
        Self(Arc::new(backends))
    }
}

impl Deref for UsableSet {
    type Target = [Arc<Backend>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

type Changed = (
    Result<(), watch::error::RecvError>,
    watch::Receiver<UsableSet>,
);

/// One balancer's view of the usable set, as `Change`s: an `Insert` when a backend becomes
/// usable, a `Remove` when it stops (down, ejected, no longer discovered). A removed backend's
/// transactions in flight keep their leases and finish.
pub(crate) struct ThreadDiscover {
    pool: Arc<Inner>,
    known: HashSet<SocketAddr>,
    queue: VecDeque<Change<SocketAddr, Endpoint>>,
    changed: ReusableBoxFuture<'static, Changed>,
    primed: Option<watch::Receiver<UsableSet>>,
}

async fn wait_change(mut rx: watch::Receiver<UsableSet>) -> Changed {
    let result = rx.changed().await;
    (result, rx)
}

impl ThreadDiscover {
    pub(crate) fn new(pool: Arc<Inner>, rx: watch::Receiver<UsableSet>) -> Self {
        Self {
            pool,
            known: HashSet::new(),
            queue: VecDeque::new(),
            changed: ReusableBoxFuture::new(std::future::pending()),
            primed: Some(rx),
        }
    }

    fn diff(&mut self, set: &UsableSet) {
        let now: HashSet<SocketAddr> = set.iter().map(|b| b.addr()).collect();
        for gone in self.known.difference(&now) {
            self.queue.push_back(Change::Remove(*gone));
        }
        for backend in set.iter().filter(|b| !self.known.contains(&b.addr())) {
            self.queue.push_back(Change::Insert(
                backend.addr(),
                Endpoint::new(self.pool.clone(), backend.clone()),
            ));
        }
        self.known = now;
    }
}

impl Stream for ThreadDiscover {
    type Item = Result<Change<SocketAddr, Endpoint>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some(mut rx) = self.primed.take() {
                let set = rx.borrow_and_update().clone();
                self.diff(&set);
                self.changed.set(wait_change(rx));
                continue;
            }
            match self.changed.poll(cx) {
                Poll::Ready((Ok(()), mut rx)) => {
                    let set = rx.borrow_and_update().clone();
                    self.diff(&set);
                    self.changed.set(wait_change(rx));
                }
                // The pool is gone: no more changes.
                Poll::Ready((Err(_), _)) => return Poll::Pending,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One backend as a balancer endpoint: ready when this thread has an idle connection to it or
/// a slot under its connection limit; its load is the backend's transactions in flight ÷ weight.
pub(crate) struct Endpoint {
    pool: Arc<Inner>,
    backend: Arc<Backend>,
    slots: Option<PollSemaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Endpoint {
    fn new(pool: Arc<Inner>, backend: Arc<Backend>) -> Self {
        Self {
            pool,
            slots: backend.slots.clone().map(PollSemaphore::new),
            backend,
            permit: None,
        }
    }
}

impl Service<Checkout> for Endpoint {
    type Response = Lease;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Lease, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_some() || self.backend.has_idle_here() {
            return Poll::Ready(Ok(()));
        }
        let Some(slots) = &mut self.slots else {
            return Poll::Ready(Ok(()));
        };
        loop {
            match slots.poll_acquire(cx) {
                Poll::Ready(Some(permit)) => {
                    self.permit = Some(permit);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err("backend connection limit closed".into()));
                }
                // At the limit, with idle connections on other threads: close one for its slot.
                Poll::Pending if self.backend.evict_idle() => continue,
                Poll::Pending => {
                    // A transaction that ends gives its connection to the pool, not its slot:
                    // ask to be polled again then.
                    self.backend.wake_on_idle(cx.waker());
                    return Poll::Pending;
                }
            }
        }
    }

    fn call(&mut self, req: Checkout) -> Self::Future {
        let permit = self.permit.take();
        let pool = self.pool.clone();
        let backend = self.backend.clone();
        Box::pin(async move {
            pool.acquire(backend, req.identity, permit)
                .await
                .map_err(BoxError::from)
        })
    }
}

impl Load for Endpoint {
    type Metric = f64;
    fn load(&self) -> f64 {
        self.backend.load()
    }
}

/// At most this many backends from one DNS name (an answer is trusted no further).
pub const MAX_DISCOVERED: usize = 256;

/// A DNS name whose addresses are backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSource {
    /// The name: A/AAAA records, or SRV records (`_smtp._tcp.mail.example`).
    pub name: String,
    /// Port for A/AAAA addresses (SRV records carry their own).
    pub port: u16,
    /// Look up SRV records instead of A/AAAA.
    pub srv: bool,
    /// Time between lookups.
    pub interval: Duration,
    /// Weight for A/AAAA addresses (SRV records carry their own).
    pub weight: u32,
    /// How these backends learn the real client.
    pub identity: IdentityMode,
}

impl Pool {
    /// Resolves `source` now and then every `interval`, replacing its backends each time. A
    /// failed lookup keeps the last answer (a DNS hiccup must not empty the pool); an answer
    /// with no records empties it (a headless Service with no ready pods).
    pub fn discover_dns(&self, resolver: TokioResolver, source: DnsSource) {
        let pool = self.clone();
        let stop = self.stop_token();
        let errors = metrics::counter!("attitude_backend_discovery_errors_total", "name" => source.name.clone());
        tokio::spawn(async move {
            loop {
                match resolve(&resolver, &source).await {
                    Ok(mut specs) => {
                        if specs.len() > MAX_DISCOVERED {
                            tracing::warn!(name = %source.name, found = specs.len(), kept = MAX_DISCOVERED, "backend discovery: too many addresses; keeping the first");
                            specs.truncate(MAX_DISCOVERED);
                        }
                        pool.set_source(&format!("dns:{}", source.name), specs)
                    }
                    Err(error) => {
                        errors.increment(1);
                        tracing::warn!(name = %source.name, %error, "backend discovery lookup failed; keeping the last answer");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(source.interval) => {}
                }
            }
        });
    }
}

async fn resolve(
    resolver: &TokioResolver,
    source: &DnsSource,
) -> Result<Vec<BackendSpec>, hickory_resolver::net::NetError> {
    let empty = |e: &hickory_resolver::net::NetError| e.is_no_records_found() || e.is_nx_domain();
    if !source.srv {
        return match resolver.lookup_ip(source.name.as_str()).await {
            Ok(ips) => Ok(ips
                .iter()
                .map(|ip| BackendSpec {
                    addr: SocketAddr::new(ip, source.port),
                    weight: source.weight.max(1),
                    identity: source.identity,
                })
                .collect()),
            Err(e) if empty(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
    }
    let records = match resolver.lookup(source.name.as_str(), RecordType::SRV).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Err(e) if empty(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    // Only the best (lowest) priority: the others are for when those are unreachable, and
    // health checks already steer around a dead one.
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok(Vec::new());
    };
    let mut specs = Vec::new();
    for srv in records.iter().filter(|s| s.priority == best) {
        match resolver.lookup_ip(srv.target.clone()).await {
            Ok(ips) => specs.extend(ips.iter().map(|ip| BackendSpec {
                addr: SocketAddr::new(ip, srv.port),
                weight: u32::from(srv.weight).max(1),
                identity: source.identity,
            })),
            Err(e) if empty(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(specs)
}
