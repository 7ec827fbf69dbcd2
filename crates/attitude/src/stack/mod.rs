//! The one place that knows every layer. Each file builds one stack, top to bottom in the order
//! a connection flows through it (the drawing of each is in `docs/design.md`):
//!
//! - [`connection`]: once per accepted client: connection rate, sessions per client, the global
//!   cap, DNSBL, pregreet, then the session (the driver);
//! - [`command`]: once per session: metrics, tarpit, protocol, the policies, then the relay;
//! - [`backend`]: once per process: the backend pool (static and DNS discovery, health) and the
//!   relay's shared state.
//!
//! [`Shared`] is what every listener's stacks share, built once and kept across reloads.

pub(crate) mod backend;
pub(crate) mod command;
pub(crate) mod connection;
pub(crate) mod fleet;
mod milter;
pub(crate) mod pools;
mod routes;
mod scan;
pub(crate) mod state;
pub(crate) mod stress;

use std::sync::Arc;
use std::time::Duration;

use attitude_edge::tls::ServerTls;
use attitude_policy::greylist::Greylist;
use attitude_service::auth::AuthOffer;
use attitude_service::driver::DriverMetrics;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EffectiveListener};
use state::ProcessState;

pub(crate) use command::Stack;

/// What every listener's stack shares, built once per process and kept across reloads: the
/// backend pools, the DNS resolver, the greylist store, the server certificate, and what the
/// backends offer for AUTH.
pub(crate) struct Shared {
    /// The backend pools (a reload starts, stops and replaces them).
    pub pools: Arc<pools::Pools>,
    /// The `[dns]` resolver, when a DNS policy or DNS discovery is on anywhere.
    pub resolver: Option<TokioResolver>,
    /// The greylist store, when any listener greylists.
    pub greylist: Option<Arc<Greylist>>,
    /// The server certificate (`[tls]`).
    pub tls: Option<Arc<ServerTls>>,
    /// The AUTH mechanisms the backends offer (learnt from every new backend connection).
    backend_auth: Arc<AuthOffer>,
    /// What the process remembers whichever listener or configuration generation learnt it:
    /// session counts, rate buckets, bans, pregreet verdicts, DNSBL scores.
    pub(crate) state: ProcessState,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
    /// Stress mode's switch.
    pub stress: Arc<stress::StressMonitor>,
}

impl Shared {
    /// Builds the shared parts from the process configuration and its listeners.
    pub(crate) fn new(
        config: &Config,
        listeners: &[EffectiveListener],
        fleet: Option<fleet::Fleet>,
    ) -> Result<Self, String> {
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let tls = Arc::new(
                    ServerTls::load(cert, key, config.tls.handshake_timeout)
                        .map_err(|e| e.to_string())?,
                );
                if config.tls.watch {
                    tls.watch(Duration::from_millis(500))
                        .map_err(|e| e.to_string())?;
                }
                Some(tls)
            }
            _ => None,
        };
        let backend_auth = backend::auth_offer();
        let pools = Arc::new(pools::Pools::new(config, backend_auth.clone())?);
        let mut shared = Self {
            pools,
            resolver: None,
            greylist: None,
            tls,
            backend_auth,
            state: ProcessState::new(fleet),
            driver_metrics: DriverMetrics::register(),
            stress: stress::StressMonitor::new(),
        };
        shared.stress.watch(shared.state.sessions.clone());
        shared.provide(config, listeners)?;
        shared.pools.start(shared.resolver.as_ref());
        Ok(shared)
    }

    /// Creates the resolver and the greylist store once some listener needs them (at start,
    /// or when a reload turns on a DNS policy or greylisting).
    pub(crate) fn provide(
        &mut self,
        config: &Config,
        listeners: &[EffectiveListener],
    ) -> Result<(), String> {
        self.stress.configure(config);
        let any = |f: fn(&Config) -> bool| listeners.iter().any(|l| f(&l.config));
        // One resolver, with one cache, for every DNS policy (DNSBL and SPF).
        if self.resolver.is_none()
            && (any(|c| c.dnsbl.enabled || c.spf.enabled)
                || config.pool_sections().any(|(_, _, b)| !b.dns.is_empty()))
        {
            let nameservers = &config.dns.nameservers;
            self.resolver = Some(
                attitude_policy::dns::resolver(
                    (!nameservers.is_empty()).then_some(nameservers.as_slice()),
                    config.dns.timeout,
                )
                .map_err(|e| e.to_string())?,
            );
        }
        if self.greylist.is_none() && any(|c| c.greylist.enabled) {
            // The store's settings are the top level's, whichever listener turned it on.
            let greylist = command::greylist_store(config, self.state.fleet.as_ref())
                .map_err(|e| e.to_string())?;
            if let (Some(fleet), Some(file)) = (&self.state.fleet, &config.greylist.file) {
                fleet.import_greylist(&greylist, file);
            }
            self.greylist = Some(greylist);
        }
        Ok(())
    }

    /// Saves what should survive a restart (the greylist). Call once sessions have ended.
    pub(crate) fn save_state(&self) {
        if let Some(greylist) = &self.greylist {
            greylist.save();
        }
    }
}

/// Runs `housekeeping` once a minute until `stop` (a configuration replaced by a reload):
/// keyed limiters forget the keys that are back at full budget. Call it from within the main
/// runtime.
pub(crate) fn every_minute(stop: &CancellationToken, housekeeping: impl Fn() + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => housekeeping(),
            }
        }
    });
}
