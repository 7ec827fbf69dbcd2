//! GCRA (the generic cell rate algorithm) per key, attitude's own: the state of a key is its
//! theoretical arrival time (TAT), and the quota (emission interval `T`, burst `b`) is read at
//! each check, so a new quota applies to the stored state at once: a reload that changes a
//! rule's rate keeps what each key has used. Governor's limiter (the same algorithm) fixes its
//! quota when made. The fleet's limiter (a Redis script) keeps the same state the same way.
//!
//! A request at `now` is allowed when `tat - now <= tau` (`tau = (b - 1) T`, with `tat` at least
//! `now`); then `tat += T`. Refused, it may retry after `tat - now - tau`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::Quota;
use governor::clock::{Clock, Reference};

/// The TATs of every key, in nanoseconds since the limiter's start.
pub(super) struct Gcra<K, C: Clock> {
    clock: C,
    start: C::Instant,
    interval: AtomicU64,
    tau: AtomicU64,
    tats: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone, C: Clock> Gcra<K, C> {
    pub(super) fn new(quota: Quota, clock: C) -> Self {
        let start = clock.now();
        let gcra = Self {
            clock,
            start,
            interval: AtomicU64::new(0),
            tau: AtomicU64::new(0),
            tats: Mutex::default(),
        };
        gcra.set_quota(quota);
        gcra
    }

    /// Applies `quota` from the next check on, to the stored state too.
    pub(super) fn set_quota(&self, quota: Quota) {
        let t = nanos(quota.replenish_interval()).max(1);
        let burst = u64::from(quota.burst_size().get());
        self.interval.store(t, Ordering::Relaxed);
        self.tau
            .store(t.saturating_mul(burst - 1), Ordering::Relaxed);
    }

    /// Nanoseconds since the limiter's start, on its clock.
    pub(super) fn now(&self) -> u64 {
        nanos(self.clock.now().duration_since(self.start).into())
    }

    /// The emission interval and the burst, as a shared store's GCRA takes them.
    pub(super) fn terms(&self) -> (Duration, u32) {
        let t = self.interval.load(Ordering::Relaxed);
        let burst = self.tau.load(Ordering::Relaxed) / t + 1;
        (
            Duration::from_nanos(t),
            u32::try_from(burst).unwrap_or(u32::MAX),
        )
    }

    /// Takes one cell for `key`, or says how long until one is free.
    pub(super) fn check(&self, key: &K) -> Result<(), Duration> {
        let now = self.now();
        let (t, tau) = (
            self.interval.load(Ordering::Relaxed),
            self.tau.load(Ordering::Relaxed),
        );
        let mut tats = self.tats.lock().expect("gcra lock");
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        if tat - now > tau {
            return Err(Duration::from_nanos(tat - now - tau));
        }
        match tats.get_mut(key) {
            Some(stored) => *stored = tat + t,
            None => {
                tats.insert(key.clone(), tat + t);
            }
        }
        Ok(())
    }

    /// Keys tracked.
    pub(super) fn len(&self) -> usize {
        self.tats.lock().expect("gcra lock").len()
    }

    /// Forgets the keys back at full burst (their TAT is past: they would start afresh).
    pub(super) fn retain_recent(&self) {
        let now = self.now();
        let mut tats = self.tats.lock().expect("gcra lock");
        tats.retain(|_, tat| *tat > now);
        tats.shrink_to_fit();
    }

    /// Forgets every key.
    pub(super) fn clear(&self) {
        *self.tats.lock().expect("gcra lock") = HashMap::new();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn burst_then_one_cell_per_interval_and_a_new_quota_on_the_stored_state() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(6).unwrap()); // 10 s a cell, burst 6
        let gcra: Gcra<&str, _> = Gcra::new(quota, clock.clone());
        for _ in 0..6 {
            assert_eq!(gcra.check(&"a"), Ok(()));
        }
        assert_eq!(gcra.check(&"a"), Err(Duration::from_secs(10)));
        assert_eq!(gcra.check(&"b"), Ok(()), "another key has its own cells");
        clock.advance(Duration::from_secs(10));
        assert_eq!(gcra.check(&"a"), Ok(()));
        assert!(gcra.check(&"a").is_err());
        // A reload halves the rate: what "a" used stays used, the next cell costs 20 s.
        gcra.set_quota(Quota::per_minute(NonZeroU32::new(3).unwrap()));
        let wait = gcra.check(&"a").unwrap_err();
        assert!(wait > Duration::from_secs(10), "{wait:?}");
        // Back at full burst: forgotten by housekeeping.
        clock.advance(Duration::from_secs(3600));
        gcra.retain_recent();
        assert_eq!(gcra.len(), 0);
    }
}
