//! The usable set as a tower `Discover` stream per balancer, and each backend as a balancer
//! endpoint whose call is a checkout through the connector.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::{PollSemaphore, ReusableBoxFuture};
use tower::discover::Change;
use tower::load::Load;
use tower_service::Service;

use crate::backend::Backend;
use crate::connector::Connector;
use crate::identity::ClientIdentity;
use crate::lease::Lease;
use crate::registry::UsableSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A checkout request through a thread's balancer.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    pub(crate) identity: ClientIdentity,
}

type Changed = (
    Result<(), watch::error::RecvError>,
    watch::Receiver<UsableSet>,
);

/// One balancer's view of the usable set, as `Change`s: an `Insert` when a backend becomes
/// usable, a `Remove` when it stops (down, ejected, no longer discovered). A removed backend's
/// transactions in flight keep their leases and finish.
pub(crate) struct ThreadDiscover {
    connector: Arc<Connector>,
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
    pub(crate) fn new(connector: Arc<Connector>, rx: watch::Receiver<UsableSet>) -> Self {
        Self {
            connector,
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
                Endpoint::new(self.connector.clone(), backend.clone()),
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
    connector: Arc<Connector>,
    backend: Arc<Backend>,
    slots: Option<PollSemaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Endpoint {
    fn new(connector: Arc<Connector>, backend: Arc<Backend>) -> Self {
        Self {
            connector,
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
        let connector = self.connector.clone();
        let backend = self.backend.clone();
        Box::pin(async move {
            connector
                .acquire(backend, req.identity, permit)
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
