//! Concurrency across a fleet: each admitted request also holds a lease in the shared store,
//! renewed while it lives and given back when it ends. A process that dies stops renewing, so
//! its leases expire within `ttl` and leave no stuck count. Refused by the store, a key is
//! refused locally for `refusal_memory` without asking again (a flood of connections from one
//! client costs one round trip, not one each).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::Fleet;

/// How a concurrency rule shares its counts with the fleet.
#[derive(Debug, Clone)]
pub struct LeaseTerms {
    /// A lease not renewed for this long expires (a dead replica's sessions count no longer).
    pub ttl: Duration,
    /// A key the store refused is refused locally for this long.
    pub refusal_memory: Duration,
    /// This process's name in the holders' ids (unique in the fleet: host name and start).
    pub replica: String,
}

/// One lease held: its store key and holder id.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) id: u64,
    pub(super) key: String,
    pub(super) holder: String,
}

pub(super) struct Leases<K> {
    pub(super) fleet: Fleet<K>,
    pub(super) terms: LeaseTerms,
    next: AtomicU64,
    /// Leases held now, by id: what the renewal task renews.
    held: Mutex<HashMap<u64, (String, String)>>,
    refused: Mutex<HashMap<K, Instant>>,
    renewing: Once,
}

impl<K> std::fmt::Debug for Leases<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("terms", &self.terms)
            .finish_non_exhaustive()
    }
}

/// Most keys remembered as refused (the rest are asked again).
const MAX_REFUSED: usize = 65_536;

impl<K: Hash + Eq + Clone + Send + 'static> Leases<K> {
    pub(super) fn new(fleet: Fleet<K>, terms: LeaseTerms) -> Self {
        Self {
            fleet,
            terms,
            next: AtomicU64::new(0),
            held: Mutex::default(),
            refused: Mutex::default(),
            renewing: Once::new(),
        }
    }

    /// A new holder id for the store key `key`.
    pub(super) fn lease(&self, key: String) -> Lease {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let holder = format!("{}:{id}", self.terms.replica);
        Lease { id, key, holder }
    }

    /// True while `key` is remembered as refused by the store.
    pub(super) fn refused(&self, key: &K) -> bool {
        let refused = self.refused.lock().expect("lease lock");
        refused
            .get(key)
            .is_some_and(|until| *until > Instant::now())
    }

    pub(super) fn remember_refusal(&self, key: K) {
        let now = Instant::now();
        let mut refused = self.refused.lock().expect("lease lock");
        if refused.len() >= MAX_REFUSED {
            refused.retain(|_, until| *until > now);
            if refused.len() >= MAX_REFUSED {
                refused.clear();
            }
        }
        refused.insert(key, now + self.terms.refusal_memory);
    }

    /// The store granted `lease`: renewed from now on until [`Leases::release`].
    pub(super) fn hold(self: &Arc<Self>, lease: &Lease) {
        self.held
            .lock()
            .expect("lease lock")
            .insert(lease.id, (lease.key.clone(), lease.holder.clone()));
        let weak = Arc::downgrade(self);
        self.renewing.call_once(|| renew_while_alive(weak));
    }

    /// Gives `lease` back. The store may queue it (Redis's sends it with the next acquire);
    /// a store whose release must wait is driven in the background, since a permit is dropped
    /// anywhere. A lost release only means the lease expires by itself.
    pub(super) fn release(&self, lease: Lease) {
        self.held.lock().expect("lease lock").remove(&lease.id);
        let mut release = self.fleet.store.release(vec![(lease.key, lease.holder)]);
        let mut cx = Context::from_waker(Waker::noop());
        if release.as_mut().poll(&mut cx).is_pending()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = release.await;
            });
        }
    }
}

/// Renews every held lease three times per `ttl`, until the leases are dropped. A lost renewal
/// only means a lease expires by itself.
fn renew_while_alive<K: Send + 'static>(leases: Weak<Leases<K>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("concurrency leases taken outside a runtime are not renewed");
        return;
    };
    runtime.spawn(async move {
        let period = match leases.upgrade() {
            Some(l) => (l.terms.ttl / 3).max(Duration::from_millis(10)),
            None => return,
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(leases) = leases.upgrade() else {
                return;
            };
            let held: Vec<(String, String)> = leases
                .held
                .lock()
                .expect("lease lock")
                .values()
                .cloned()
                .collect();
            if held.is_empty() {
                continue;
            }
            let renew = leases.fleet.store.renew(held, leases.terms.ttl);
            drop(leases);
            if let Err(error) = renew.await {
                tracing::debug!(%error, "concurrency leases not renewed this round");
            }
        }
    });
}
