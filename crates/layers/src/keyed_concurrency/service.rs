use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::ResponseFuture;
use super::layer::{Rule, Shared};
use super::lease::Lease;
use crate::slot::{Slot, call_later};
use crate::{Mode, Reject, Rejection};

/// One unit of a key's concurrency (and its fleet lease, if shared); released when dropped.
#[derive(Debug)]
pub struct Permit<K: Hash + Eq + Clone + Send + 'static> {
    shared: Arc<Shared<K>>,
    key: Option<K>,
    /// Boxed: every session's permit carries the field, few hold a lease.
    lease: Option<Box<Lease>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Permit<K> {
    fn drop(&mut self) {
        if let (Some(lease), Some(leases)) = (self.lease.take(), &self.shared.leases) {
            leases.release(*lease);
        }
        let Some(key) = self.key.take() else {
            return;
        };
        let mut map = self.shared.in_flight.lock().expect("lock");
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
        self.shared.metrics.tracked_keys.set(map.len() as f64);
    }
}

/// Limits requests in flight per key; see the module docs.
#[derive(Debug)]
pub struct KeyedConcurrency<S, K, F, R> {
    inner: Slot<S>,
    rule: Arc<Rule<K>>,
    key: F,
    reject: R,
}

impl<S: Clone, K, F: Clone, R: Clone> Clone for KeyedConcurrency<S, K, F, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            rule: self.rule.clone(),
            key: self.key.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<S, K, F, R> KeyedConcurrency<S, K, F, R> {
    pub(super) fn new(inner: S, rule: Arc<Rule<K>>, key: F, reject: R) -> Self {
        let later = rule.state.leases.is_some();
        Self {
            inner: Slot::new(inner, later),
            rule,
            key,
            reject,
        }
    }
}

/// Counts one over the limit: refused (`true`) or, in a dry run, only counted.
fn over<K>(shared: &Shared<K>, mode: Mode) -> bool {
    if mode == Mode::DryRun {
        shared.metrics.would_reject.increment(1);
        tracing::info!(rule = %shared.name, "concurrency limit would refuse (dry-run)");
        false
    } else {
        shared.metrics.rejected.increment(1);
        true
    }
}

fn rejection<K>(shared: &Shared<K>) -> Rejection {
    Rejection {
        layer: "concurrency",
        rule: shared.name.clone(),
        retry_after: None,
    }
}

impl<S, K, F, R, Req> Service<Req> for KeyedConcurrency<S, K, F, R>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Req) -> Option<K>,
    R: Reject<Req, Response = S::Response, Error = S::Error> + Clone + Send + Sync + 'static,
    R::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Future, K, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let (shared, limit, mode) = (&self.rule.state, self.rule.limit, self.rule.mode);
        // This process's count first: it is the limit when the store is away, and a client over
        // it here is over it in the fleet too.
        let admitted = {
            let mut map = shared.in_flight.lock().expect("lock");
            let count = map.entry(key.clone()).or_insert(0);
            let admitted = *count < limit || !over(shared, mode);
            if admitted {
                *count += 1;
            } else if *count == 0 {
                map.remove(&key);
            }
            shared.metrics.tracked_keys.set(map.len() as f64);
            admitted
        };
        if !admitted {
            return ResponseFuture::rejected(self.reject.reject(req, rejection(shared)));
        }
        let mut permit = Permit {
            shared: shared.clone(),
            key: Some(key),
            lease: None,
        };
        let shared_key = shared.leases.as_ref().and_then(|leases| {
            let key = permit.key.as_ref().expect("just set");
            Some((leases.clone(), (leases.fleet.encode)(key)?))
        });
        let Some((leases, name)) = shared_key else {
            return ResponseFuture::inner(self.inner.call(req), Some(permit));
        };
        let key = permit.key.clone().expect("just set");
        if leases.refused(&key) {
            if over(shared, mode) {
                drop(permit);
                return ResponseFuture::rejected(self.reject.reject(req, rejection(shared)));
            }
            return ResponseFuture::inner(self.inner.call(req), Some(permit));
        }
        let lease = leases.lease(format!("{}:{name}", shared.name));
        let ask = leases.fleet.store.acquire(
            lease.key.clone(),
            lease.holder.clone(),
            u32::try_from(limit).unwrap_or(u32::MAX),
            leases.terms.ttl,
        );
        let inner = self
            .inner
            .handle()
            .expect("a fleet rule shares its inner service");
        let reject = self.reject.clone();
        let shared = shared.clone();
        ResponseFuture::fleet(Box::pin(async move {
            match ask.await {
                Ok(true) => {
                    leases.hold(&lease);
                    permit.lease = Some(Box::new(lease));
                }
                Ok(false) => {
                    leases.remember_refusal(key);
                    if over(&shared, mode) {
                        drop(permit);
                        return reject.reject(req, rejection(&shared)).await;
                    }
                }
                // The store is away: this process's count admitted it (the store counts the
                // error and the degraded mode).
                Err(_) => {}
            }
            let response = call_later(&inner, req).await;
            drop(permit);
            response
        }))
    }
}
