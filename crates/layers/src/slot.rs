//! The inner service of a layer that may call it after an await (a fleet-backed check asks the
//! shared store first): owned when the layer decides at once, behind a mutex otherwise, so a
//! service that is not `Clone` (a stateful session service) can still be called from the
//! response future. The lock is taken only to call, never across an await.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_service::Service;

/// A boxed response future, for the requests that wait on the shared store.
pub type BoxResponse<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// An inner service, owned or shared with the futures that call it later.
#[derive(Debug)]
pub enum Slot<S> {
    /// Called only from `call`.
    Own(S),
    /// Also called from response futures.
    Shared(Arc<Mutex<S>>),
}

impl<S: Clone> Clone for Slot<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Own(s) => Self::Own(s.clone()),
            Self::Shared(s) => Self::Shared(s.clone()),
        }
    }
}

impl<S> Slot<S> {
    /// `inner`, shared when it may be called later (`later`).
    pub fn new(inner: S, later: bool) -> Self {
        if later {
            Self::Shared(Arc::new(Mutex::new(inner)))
        } else {
            Self::Own(inner)
        }
    }

    /// The inner service's readiness.
    pub fn poll_ready<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>>
    where
        S: Service<Req>,
    {
        match self {
            Self::Own(s) => s.poll_ready(cx),
            Self::Shared(s) => s.lock().expect("inner service lock").poll_ready(cx),
        }
    }

    /// Calls it now.
    pub fn call<Req>(&mut self, req: Req) -> S::Future
    where
        S: Service<Req>,
    {
        match self {
            Self::Own(s) => s.call(req),
            Self::Shared(s) => s.lock().expect("inner service lock").call(req),
        }
    }

    /// The handle to call it from a future (`None` when owned).
    pub fn handle(&self) -> Option<Arc<Mutex<S>>> {
        match self {
            Self::Own(_) => None,
            Self::Shared(s) => Some(s.clone()),
        }
    }
}

/// Calls the shared inner service (readiness was reserved by the layer's `poll_ready`).
pub fn call_later<S, Req>(inner: &Arc<Mutex<S>>, req: Req) -> S::Future
where
    S: Service<Req>,
{
    inner.lock().expect("inner service lock").call(req)
}
