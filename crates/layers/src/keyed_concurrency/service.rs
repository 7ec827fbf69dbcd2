use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::ResponseFuture;
use super::layer::{Rule, Shared};
use crate::{Mode, Reject, Rejection};

/// One unit of a key's concurrency; released when dropped.
#[derive(Debug)]
pub struct Permit<K: Hash + Eq> {
    shared: Arc<Shared<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq> Drop for Permit<K> {
    fn drop(&mut self) {
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
#[derive(Debug, Clone)]
pub struct KeyedConcurrency<S, K, F, R> {
    inner: S,
    rule: Arc<Rule<K>>,
    key: F,
    reject: R,
}

impl<S, K, F, R> KeyedConcurrency<S, K, F, R> {
    pub(super) fn new(inner: S, rule: Arc<Rule<K>>, key: F, reject: R) -> Self {
        Self {
            inner,
            rule,
            key,
            reject,
        }
    }
}

impl<S, K, F, R, Req> Service<Req> for KeyedConcurrency<S, K, F, R>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> Option<K>,
    R: Reject<Req, Response = S::Response, Error = S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let (shared, limit, mode) = (&self.rule.state, self.rule.limit, self.rule.mode);
        let admitted = {
            let mut map = shared.in_flight.lock().expect("lock");
            let count = map.entry(key.clone()).or_insert(0);
            let admitted = *count < limit || mode == Mode::DryRun;
            if *count >= limit {
                if mode == Mode::DryRun {
                    shared.metrics.would_reject.increment(1);
                    tracing::info!(rule = %shared.name, "concurrency limit would refuse (dry-run)");
                } else {
                    shared.metrics.rejected.increment(1);
                }
            }
            if admitted {
                *count += 1;
            } else if *count == 0 {
                map.remove(&key);
            }
            shared.metrics.tracked_keys.set(map.len() as f64);
            admitted
        };
        if admitted {
            let permit = Permit {
                shared: shared.clone(),
                key: Some(key),
            };
            ResponseFuture::inner(self.inner.call(req), Some(permit))
        } else {
            let rejection = Rejection {
                layer: "concurrency",
                rule: shared.name.clone(),
                retry_after: None,
            };
            ResponseFuture::rejected(self.reject.reject(req, rejection))
        }
    }
}
