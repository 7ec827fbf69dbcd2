//! Stress mode's switch (`[stress]`): sampled ten times a second from the process's session
//! count against `[connections] max_sessions`, entered at `enter_at` of it and left below
//! `leave_at`. The driver reads the switch (`attitude_service::driver::Stress`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use attitude_layers::keyed_concurrency::KeyedConcurrencyState;
use attitude_service::driver::Stress;

use crate::config::Config;

/// The switch and its thresholds (set from each configuration a reload brings).
#[derive(Debug)]
pub(crate) struct StressMonitor {
    pub stress: Arc<Stress>,
    /// Sessions at which stress begins, and below which it ends (0: never).
    enter: AtomicU64,
    leave: AtomicU64,
}

impl StressMonitor {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            stress: Arc::default(),
            enter: AtomicU64::new(0),
            leave: AtomicU64::new(0),
        })
    }

    /// The thresholds of `config` (the process's top level).
    pub(crate) fn configure(&self, config: &Config) {
        let s = &config.stress;
        let cap = config.connections.max_sessions as f64;
        let (enter, leave) = if s.enabled {
            (
                (cap * s.enter_at).ceil().max(1.0) as u64,
                (cap * s.leave_at).floor() as u64,
            )
        } else {
            (0, 0)
        };
        self.enter.store(enter, Ordering::Relaxed);
        self.leave.store(leave, Ordering::Relaxed);
        if enter == 0 {
            self.stress.set(false);
        }
    }

    /// Samples `sessions` every 100 ms for the life of the process.
    pub(crate) fn watch(self: &Arc<Self>, sessions: KeyedConcurrencyState<()>) {
        let gauge = metrics::gauge!("attitude_stress");
        let entered = metrics::counter!("attitude_stress_transitions_total", "to" => "on");
        let left = metrics::counter!("attitude_stress_transitions_total", "to" => "off");
        gauge.set(0.0);
        let monitor = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = monitor.upgrade() else { return };
                let (enter, leave) = (
                    m.enter.load(Ordering::Relaxed),
                    m.leave.load(Ordering::Relaxed),
                );
                let now = sessions.in_flight(&()) as u64;
                let on = m.stress.is_on();
                if !on && enter > 0 && now >= enter && m.stress.set(true) {
                    gauge.set(1.0);
                    entered.increment(1);
                    tracing::warn!(
                        sessions = now,
                        enter_at = enter,
                        "stress mode on: shorter timeouts and lower limits for every session"
                    );
                } else if on && now < leave.max(1).min(enter) && m.stress.set(false) {
                    gauge.set(0.0);
                    left.increment(1);
                    tracing::info!(sessions = now, leave_below = leave, "stress mode off");
                }
            }
        });
    }
}
