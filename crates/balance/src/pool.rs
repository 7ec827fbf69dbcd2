//! The pool: the facade the relay uses. It holds the narrow parts and wires them together:
//!
//! ```text
//! Pool ─► Registry (members, health, outlier, usable set) ◄─ dns (sources), health (Notify)
//!      ─► per-thread ThreadBalancer ─► ThreadDiscover (watch of the usable set) ─► Endpoint
//!                                                                  ─► Connector ─► Lease
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use metrics::Counter;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use attitude_codec::Extensions;

use crate::backend::{Backend, BackendSpec};
use crate::balancer::ThreadBalancer;
use crate::caps::{BackendCaps, Offer};
use crate::config::PoolConfig;
use crate::conn::CapsHook;
use crate::connector::{CheckoutError, Connector};
use crate::discover::{Checkout, ThreadDiscover};
use crate::dns::{self, DnsSource};
use crate::health::Checker;
use crate::identity::ClientIdentity;
use crate::lease::Lease;
use crate::registry::Registry;
use crate::transport::{Dial, TcpDial};

/// The backend pool; cheap to clone. See the crate docs.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<PoolConfig>,
    registry: Arc<Registry>,
    connector: Arc<Connector>,
    /// One balancer per worker thread.
    balancers: Mutex<HashMap<ThreadId, Arc<ThreadBalancer>>>,
    stop: CancellationToken,
    no_backend: Counter,
    busy: Counter,
}

impl Pool {
    /// A pool with no backends yet; call [`Pool::set_source`] (static list) or
    /// [`Pool::discover_dns`], then [`Pool::start`] from within a Tokio runtime.
    pub fn new(config: PoolConfig, on_caps: Option<CapsHook>) -> Self {
        Self::with_dial(config, on_caps, Arc::new(TcpDial))
    }

    /// A pool whose connections `dial` opens (in-process backends, for tests); otherwise as
    /// [`Pool::new`].
    pub fn with_dial(config: PoolConfig, on_caps: Option<CapsHook>, dial: Arc<dyn Dial>) -> Self {
        let config = Arc::new(config);
        let name = config.name.clone();
        let stop = CancellationToken::new();
        let checker = Arc::new(Checker {
            config: config.health.clone(),
            helo_name: config.helo_name.clone(),
            tls: config.tls.clone(),
            on_caps: on_caps.clone(),
            dial: dial.clone(),
        });
        let registry = Arc::new(Registry::new(config.clone(), checker, stop.clone()));
        let connector = Arc::new(Connector::new(
            config.clone(),
            registry.clone(),
            on_caps,
            dial,
        ));
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                connector,
                balancers: Mutex::default(),
                stop,
                no_backend: metrics::counter!("attitude_backend_unavailable_total", "pool" => name.clone(), "reason" => "none_up"),
                busy: metrics::counter!("attitude_backend_unavailable_total", "pool" => name, "reason" => "busy"),
            }),
        }
    }

    /// The same pool (a clone of this one), not merely one with equal settings.
    pub fn same(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Replaces the backends one discovery source knows. Backends that appear start serving
    /// (after their first health check, if checks are on); backends that disappear get no new
    /// transactions, but the transactions they are serving finish.
    pub fn set_source(&self, source: &str, specs: Vec<BackendSpec>) {
        self.inner.registry.set_source(source, specs);
    }

    /// Resolves `source` now and then every `interval`, replacing its backends each time (see
    /// the `dns` module).
    pub fn discover_dns(&self, resolver: TokioResolver, source: DnsSource) {
        let inner = &self.inner;
        dns::spawn(inner.registry.clone(), inner.stop.clone(), resolver, source);
    }

    /// Starts the controller (usable set, ejection expiry, idle expiry) and the health checks.
    pub fn start(&self) {
        tokio::spawn(self.inner.registry.clone().control());
        self.inner.registry.touch();
    }

    /// Waits, at most `limit`, until every backend's EHLO was seen or its first health check
    /// failed: at start, so that the first clients are offered what the backends offer (until
    /// then attitude offers only its own extensions).
    pub async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.backends().iter().all(|b| b.settled()) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops health checks, discovery and the controller.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Whether some backend may take a transaction now.
    pub fn available(&self) -> bool {
        !self.inner.registry.usable().is_empty()
    }

    /// Every known backend (for status and tests).
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.inner.registry.backends()
    }

    /// Waits until the usable set changes (tests, status).
    pub async fn changed(&self) {
        let mut rx = self.inner.registry.subscribe();
        let _ = rx.changed().await;
    }

    /// What attitude may offer clients now: what every usable backend offered.
    pub fn offer(&self) -> Offer {
        Offer::of(self.usable_caps())
    }

    /// What each usable backend offered (`None`: not seen yet), for an offer over several
    /// pools.
    pub fn usable_caps(&self) -> Vec<Option<BackendCaps>> {
        self.inner
            .registry
            .usable()
            .iter()
            .map(|b| b.offered())
            .collect()
    }

    /// A backend connection for a transaction of `identity`'s client. With `exclude` empty the
    /// backend is chosen by this thread's p2c balancer; otherwise (failover) the least loaded
    /// usable backend not in `exclude`.
    pub async fn checkout(
        &self,
        identity: &ClientIdentity,
        exclude: &[SocketAddr],
    ) -> Result<Lease, CheckoutError> {
        self.checkout_for(identity, exclude, Extensions::EMPTY)
            .await
    }

    /// As [`Pool::checkout`], among the backends that offer every extension of `needs` (when
    /// some usable backend does not, the least loaded one that does).
    pub async fn checkout_for(
        &self,
        identity: &ClientIdentity,
        exclude: &[SocketAddr],
        needs: Extensions,
    ) -> Result<Lease, CheckoutError> {
        let inner = &self.inner;
        let capable = |b: &Backend| {
            needs.is_empty()
                || b.offered()
                    .is_some_and(|c| c.extensions.contains_all(needs))
        };
        let choice = {
            let usable = inner.registry.usable();
            if exclude.is_empty() && usable.iter().all(|b| capable(b)) {
                None
            } else {
                let candidates: Vec<_> = usable
                    .iter()
                    .filter(|b| !exclude.contains(&b.addr()))
                    .collect();
                Some(
                    match candidates
                        .iter()
                        .filter(|b| capable(b))
                        .min_by(|a, b| a.load().total_cmp(&b.load()))
                    {
                        Some(&backend) => Ok(backend.clone()),
                        None if !candidates.is_empty() => Err(CheckoutError::Unsupported(needs)),
                        None => Err(CheckoutError::NoBackend),
                    },
                )
            }
        };
        if let Some(choice) = choice {
            return inner
                .connector
                .acquire(choice?, identity.clone(), None)
                .await;
        }
        if !self.available() {
            inner.no_backend.increment(1);
            return Err(CheckoutError::NoBackend);
        }
        let balancer = self.balancer();
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
                    inner.busy.increment(1);
                    return Err(CheckoutError::Busy);
                }
            },
        };
        let lease = match chosen {
            Ok(checkout) => checkout.await,
            Err(error) => Err(error),
        };
        lease.map_err(|error| match error.downcast::<CheckoutError>() {
            Ok(error) => *error,
            Err(other) => {
                tracing::warn!(error = %other, "backend balancer failed");
                CheckoutError::NoBackend
            }
        })
    }

    /// This thread's balancer, made on first use.
    fn balancer(&self) -> Arc<ThreadBalancer> {
        let inner = &self.inner;
        let me = std::thread::current().id();
        let mut balancers = inner.balancers.lock().expect("balancers lock");
        balancers
            .entry(me)
            .or_insert_with(|| {
                Arc::new(ThreadBalancer::new(ThreadDiscover::new(
                    inner.connector.clone(),
                    inner.registry.subscribe(),
                )))
            })
            .clone()
    }
}
