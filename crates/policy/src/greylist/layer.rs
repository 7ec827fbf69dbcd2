use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use attitude_layers::Mode;
use attitude_service::address::canonical_ip;
use ipnet::IpNet;
use metrics::Gauge;
use tower_layer::Layer;

use super::fleet::{FleetGreylist, OnStoreError};
use super::{Clock, GreylistService, Store, Timing, Verdict};
use crate::Decisions;

/// Greylisting settings.
pub struct GreylistConfig {
    /// Times and bounds.
    pub timing: Timing,
    /// Client networks are the address reduced to these prefix lengths (spamd: /24 and /64).
    pub prefix_v4: u8,
    /// IPv6 prefix length.
    pub prefix_v6: u8,
    /// Clients never greylisted.
    pub trusted_networks: Vec<IpNet>,
    /// Where the store is saved on shutdown and loaded from on start (`None`: memory only).
    pub file: Option<PathBuf>,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// `policy="greylist"` decisions.
    pub decisions: Decisions,
    /// Triplets remembered.
    pub entries: Gauge,
    /// The clock (wall-clock seconds).
    pub clock: Clock,
    /// The fleet's store: when set, it decides (exactly, for every replica), and `on_error`
    /// says what happens when it does not answer.
    pub fleet: Option<Arc<dyn FleetGreylist>>,
    /// Without an answer from the fleet's store.
    pub on_error: OnStoreError,
    /// Attempts the fleet's store did not answer (`on_error` decided).
    pub store_errors: metrics::Counter,
}

impl std::fmt::Debug for GreylistConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreylistConfig").finish_non_exhaustive()
    }
}

/// The greylist shared by every session: its settings and its store.
pub struct Greylist {
    pub(super) config: GreylistConfig,
    pub(super) store: Mutex<Store>,
}

impl std::fmt::Debug for Greylist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greylist").finish_non_exhaustive()
    }
}

/// The greylist file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("greylist file {}: {source}", .path.display())]
pub struct GreylistError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Cause.
    pub source: std::io::Error,
}

impl Greylist {
    /// An empty greylist, or the one saved in `config.file` (a missing file is an empty list;
    /// an unreadable one is an error that names it).
    pub fn open(config: GreylistConfig) -> Result<Self, GreylistError> {
        let store = match &config.file {
            Some(path) if path.exists() => {
                let (store, bad) =
                    Store::load(path, &config.timing).map_err(|source| GreylistError {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(file = %path.display(), triplets = store.len(), skipped = bad, "greylist loaded");
                store
            }
            _ => Store::default(),
        };
        config.entries.set(store.len() as f64);
        Ok(Self {
            config,
            store: Mutex::new(store),
        })
    }

    /// The client network of `ip` as the store keys it, or `None` for a trusted client.
    pub(super) fn network(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical_ip(ip);
        if self.config.trusted_networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let bits = if ip.is_ipv4() {
            self.config.prefix_v4
        } else {
            self.config.prefix_v6
        };
        IpNet::new(ip, bits).ok().map(|n| n.trunc().to_string())
    }

    /// The verdict on one attempt now.
    pub(super) fn check(&self, network: &str, sender: &str, recipient: &str) -> Verdict {
        let now = (self.config.clock)();
        let mut store = self.store.lock().expect("greylist lock");
        let verdict = store.check(&self.config.timing, now, network, sender, recipient);
        self.config.entries.set(store.len() as f64);
        verdict
    }

    /// The verdict on one attempt, from the fleet's store (`None`: no fleet).
    pub(super) fn ask_fleet(
        &self,
        network: &str,
        sender: &str,
        recipient: &str,
    ) -> Option<attitude_layers::fleet::FleetFuture<Verdict>> {
        let fleet = self.config.fleet.as_ref()?;
        Some(fleet.greylist(network, sender, recipient, &self.config.timing))
    }

    /// Its times and bounds.
    pub fn timing(&self) -> &Timing {
        &self.config.timing
    }

    /// A copy of the process's store (what the file holds), e.g. to import it into the fleet's.
    pub fn snapshot(&self) -> Store {
        self.store.lock().expect("greylist lock").clone()
    }

    /// Saves the store to its file, if it has one (not with the fleet's store, which is the
    /// greylist then: Redis keeps it). Sessions are not held up while it writes:
    /// the store is copied under the lock and written from the copy (call it off the runtime's
    /// threads, `spawn_blocking`: it syncs the file).
    pub fn save(&self) {
        let Some(path) = self
            .config
            .file
            .as_ref()
            .filter(|_| self.config.fleet.is_none())
        else {
            return;
        };
        let now = (self.config.clock)();
        let store = self.store.lock().expect("greylist lock").clone();
        match store.save(path, now, &self.config.timing) {
            Ok(n) => tracing::info!(file = %path.display(), triplets = n, "greylist saved"),
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "cannot save the greylist")
            }
        }
    }
}

/// Recipients that are never greylisted (a route's `greylist = false`).
pub type Exempt = Arc<dyn Fn(&attitude_codec::RcptTo) -> bool + Send + Sync>;

/// Adds [`GreylistService`].
#[derive(Clone)]
pub struct GreylistLayer {
    greylist: Arc<Greylist>,
    exempt: Option<Exempt>,
}

impl std::fmt::Debug for GreylistLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreylistLayer").finish_non_exhaustive()
    }
}

impl GreylistLayer {
    /// A layer over a shared greylist.
    pub fn new(greylist: Arc<Greylist>) -> Self {
        Self {
            greylist,
            exempt: None,
        }
    }

    /// Recipients for which `exempt` holds pass without greylisting.
    pub fn exempting(mut self, exempt: Exempt) -> Self {
        self.exempt = Some(exempt);
        self
    }
}

impl<S> Layer<S> for GreylistLayer {
    type Service = GreylistService<S>;

    fn layer(&self, inner: S) -> GreylistService<S> {
        GreylistService::new(inner, self.greylist.clone(), self.exempt.clone())
    }
}
