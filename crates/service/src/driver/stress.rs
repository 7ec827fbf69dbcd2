//! Stress mode (Postfix's `stress`): while the process holds most of the sessions it may hold,
//! every session, new and running, gets shorter timeouts, a higher minimum DATA rate and
//! lower error and junk-command limits, so that slow and idle clients give their slots back to
//! the ones that send mail. Authenticated sessions and trusted clients keep their normal values.
//! Who turns it on and off is the caller's (attitude samples its session count); the driver only
//! reads it, and a session waiting for its next command is woken when it changes.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Waits are spread over this many notifiers (each registration takes its notifier's lock, once
/// per read of every session), as tokio's own watch channel does.
const SHARDS: usize = 8;

/// The switch every session watches: a flag, and a notification at each flip. A waiting session
/// holds one `Notified` (64 bytes) rather than a watch receiver and its `changed()` future.
#[derive(Debug, Default)]
pub struct Stress {
    on: AtomicBool,
    flipped: [Notify; SHARDS],
}

impl Stress {
    /// Turns stress on or off; true when that changed it (then every waiting session wakes).
    pub fn set(&self, on: bool) -> bool {
        if self.on.swap(on, Ordering::SeqCst) == on {
            return false;
        }
        self.flipped.iter().for_each(Notify::notify_waiters);
        true
    }

    /// On now?
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }
}

pin_project! {
    /// Resolves at the switch's next flip after [`Flip::arm`]; never without a switch.
    pub(super) struct Flip<'a> {
        #[pin]
        notified: Option<Notified<'a>>,
    }
}

impl<'a> Flip<'a> {
    /// The wait of session `id` (which spreads sessions over the notifiers).
    pub(super) fn new(stress: Option<&'a Stress>, id: u64) -> Self {
        Self {
            notified: stress.map(|s| s.flipped[id as usize % SHARDS].notified()),
        }
    }

    /// Registers the wait now: a flip after this (while the caller reads the switch to compute
    /// its deadlines) still wakes it.
    pub(super) fn arm(self: Pin<&mut Self>) {
        if let Some(notified) = self.project().notified.as_pin_mut() {
            notified.enable();
        }
    }
}

impl Future for Flip<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().notified.as_pin_mut() {
            Some(notified) => notified.poll(cx),
            None => Poll::Pending,
        }
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
