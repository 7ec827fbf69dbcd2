//! systemd's notification protocol (`Type=notify`): `READY=1` once every listener is bound,
//! `RELOADING=1` then `READY=1` around a reload, `STOPPING=1` when the drain starts, and the
//! sessions and backends in `STATUS=`. Without `NOTIFY_SOCKET` (not under systemd) nothing is
//! sent. Backend health goes in `STATUS=`, never in readiness: a mail server that is down must
//! not keep attitude from starting (systemd would restart it in a loop).

use std::time::Duration;

use sd_notify::NotifyState;

use super::reload::Running;

/// How often `STATUS=` is brought up to date while serving.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The service manager's end, when there is one.
pub(super) struct Notifier {
    enabled: bool,
    /// The last status sent, so an unchanged one is not sent again.
    last_status: String,
}

impl Notifier {
    /// From the environment: enabled when `NOTIFY_SOCKET` is set.
    pub(super) fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(error) = sd_notify::notify(states) {
            tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }

    /// Whether there is a service manager to tell.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Every listener is bound and accepting.
    pub(super) fn ready(&mut self, status: String) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// A reload starts (`MONOTONIC_USEC` with it, as `Type=notify-reload` requires).
    pub(super) fn reloading(&self) {
        let Ok(now) = NotifyState::monotonic_usec_now() else {
            return self.send(&[NotifyState::Reloading]);
        };
        self.send(&[NotifyState::Reloading, now]);
    }

    /// The drain starts.
    pub(super) fn stopping(&self, sessions: usize) {
        let status = format!("draining {sessions} sessions");
        self.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
    }

    /// The current status, when it changed.
    pub(super) fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }
}

/// What `systemctl status` shows: sessions, backends up, stress, a refused reload.
pub(super) fn status_line(running: &Running, sessions: usize) -> String {
    let shared = &running.shared;
    let backends = shared.pools.backends();
    let usable = backends.iter().filter(|b| b.is_usable()).count();
    let mut line = format!(
        "serving: {sessions} sessions, {usable} of {} backends up",
        backends.len()
    );
    if shared.stress.stress.is_on() {
        line.push_str("; stress mode on");
    }
    if running.reload_refused {
        line.push_str("; the last reload was refused, see the log");
    }
    line
}
