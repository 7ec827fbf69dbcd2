//! Stress mode (Postfix's `stress`): while the process holds most of the sessions it may hold,
//! every session, new and running, gets shorter timeouts, a higher minimum DATA rate and
//! lower error and junk-command limits, so that slow and idle clients give their slots back to
//! the ones that send mail. Authenticated sessions and trusted clients keep their normal values.
//! Who turns it on and off is the caller's (attitude samples its session count); the driver only
//! reads it, and a session waiting for its next command is woken when it changes.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;

/// The switch every session watches.
#[derive(Debug)]
pub struct Stress {
    tx: watch::Sender<bool>,
}

impl Default for Stress {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }
}

impl Stress {
    /// Turns stress on or off; true when that changed it.
    pub fn set(&self, on: bool) -> bool {
        self.tx
            .send_if_modified(|now| std::mem::replace(now, on) != on)
    }

    /// On now?
    pub fn is_on(&self) -> bool {
        *self.tx.borrow()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// The session limits under stress (see [`super::DriverConfig`] for each one's meaning).
#[derive(Debug, Clone)]
pub struct StressLimits {
    /// Postfix: `smtpd_timeout` 10 s under stress (300 s otherwise).
    pub command_timeout: Duration,
    /// DATA silence (Postfix has one timeout for both: 10 s under stress).
    pub data_timeout: Duration,
    /// Octets per second a message must average after `data_timeout`.
    pub min_data_rate: u64,
    /// Postfix: `smtpd_hard_error_limit` 1 under stress (20 otherwise).
    pub max_errors: u32,
    /// Postfix: `smtpd_junk_command_limit` 1 under stress (100 otherwise).
    pub junk_command_limit: u32,
    /// Clients that keep their normal limits (trusted networks).
    pub exempt: Vec<IpNet>,
}

impl StressLimits {
    pub(super) fn exempts(&self, client: IpAddr) -> bool {
        let client = crate::address::canonical_ip(client);
        self.exempt.iter().any(|n| n.contains(&client))
    }
}

/// The limits a session has now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub min_data_rate: u64,
    pub max_errors: u32,
    pub junk_command_limit: u32,
}
