//! The circuit breaker in front of Redis: after `failures` calls in a row failed (an error or a
//! timeout), the store is not asked at all; a probe in the background (`PING` every `open_for`)
//! closes it again once Redis answers. While open, callers fall back at once to their local
//! state, so a Redis that is down or slow costs a session no wait, and no session pays for a
//! failed probe. It also keeps the state gauges and says in the log when the store goes away
//! and when it comes back.

use std::sync::Mutex;
use std::time::Duration;

use metrics::Gauge;

/// Breaker settings.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit.
    pub failures: u32,
    /// How often the background probe tries Redis while the circuit is open.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            open_for: Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
enum Status {
    Closed { failures: u32 },
    Open,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    status: Mutex<Status>,
    up: Gauge,
    degraded: Gauge,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        let up = metrics::gauge!("attitude_state_up");
        let degraded = metrics::gauge!("attitude_state_degraded");
        up.set(1.0);
        degraded.set(0.0);
        Self {
            config,
            status: Mutex::new(Status::Closed { failures: 0 }),
            up,
            degraded,
        }
    }

    /// May a call go to the store now?
    pub(crate) fn admit(&self) -> bool {
        matches!(
            *self.status.lock().expect("breaker lock"),
            Status::Closed { .. }
        )
    }

    /// A call (or the probe) succeeded.
    pub(crate) fn success(&self) {
        let mut status = self.status.lock().expect("breaker lock");
        if matches!(*status, Status::Open) {
            tracing::info!(
                "shared state (Redis) is back: limits, bans and greylisting are the fleet's again"
            );
            self.up.set(1.0);
            self.degraded.set(0.0);
        }
        *status = Status::Closed { failures: 0 };
    }

    /// A call failed; `why` is logged when it opens the circuit. True when it opened it now
    /// (the caller starts the probe).
    pub(crate) fn failure(&self, why: &str) -> bool {
        let mut status = self.status.lock().expect("breaker lock");
        match *status {
            Status::Closed { failures } if failures + 1 < self.config.failures => {
                *status = Status::Closed {
                    failures: failures + 1,
                };
                false
            }
            Status::Closed { .. } => {
                drop(status);
                self.open(why);
                true
            }
            Status::Open => false,
        }
    }

    /// Opens the circuit now (Redis away, or unreachable at start).
    pub(crate) fn open(&self, why: &str) {
        tracing::warn!(error = why, probe_every = ?self.config.open_for, "shared state (Redis) is away: each replica limits on its own (degraded mode)");
        *self.status.lock().expect("breaker lock") = Status::Open;
        self.up.set(0.0);
        self.degraded.set(1.0);
    }

    /// True while the store is not used.
    pub(crate) fn is_open(&self) -> bool {
        !self.admit()
    }

    /// How often the probe runs.
    pub(crate) fn probe_every(&self) -> Duration {
        self.config.open_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_a_success() {
        let breaker = Breaker::new(BreakerConfig {
            failures: 2,
            open_for: Duration::from_secs(1),
        });
        assert!(breaker.admit());
        assert!(!breaker.failure("x"));
        breaker.success();
        assert!(!breaker.failure("x"));
        assert!(
            breaker.admit(),
            "a success in between starts the count over"
        );
        assert!(breaker.failure("x"), "two in a row: open");
        assert!(!breaker.admit() && breaker.is_open());
        assert!(!breaker.failure("x"), "opened once");
        breaker.success();
        assert!(breaker.admit() && !breaker.is_open());
    }
}
