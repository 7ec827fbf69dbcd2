use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attitude_service::driver::DriverMetrics;
use tower_layer::Layer;

use super::Pregreet;
use crate::Decisions;
use crate::fleet::VerdictTable;

/// What happens to an early talker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum PregreetAction {
    /// Greet it, answer its first command with `554 5.5.1`, close.
    Reject,
    /// Close the connection at once.
    Drop,
}

/// Pregreet settings.
pub struct PregreetConfig {
    /// How long to wait before the greeting.
    pub pause: Duration,
    /// Send `220-` as a first line before the pause.
    pub multiline: bool,
    /// The name in the greeting.
    pub hostname: String,
    /// What happens to an early talker.
    pub action: PregreetAction,
    /// A client that waited is greeted at once for this long.
    pub pass_ttl: Duration,
    /// An early talker is refused at once for this long.
    pub fail_ttl: Duration,
    /// Most clients remembered.
    pub max_entries: usize,
    /// Clients never tested (trusted networks).
    pub skip_networks: Vec<ipnet::IpNet>,
    /// Enforce or dry-run (early talkers counted and logged, then served).
    pub mode: attitude_layers::Mode,
    /// `policy="pregreet"` decisions.
    pub decisions: Decisions,
    /// Refusals count as refused sessions.
    pub sessions: Arc<DriverMetrics>,
    /// The fleet's verdicts (`[state] redis`): a client that passed or failed on any replica is
    /// known to all.
    pub fleet: Option<VerdictTable>,
    /// Stress mode, and the pause under it (the shorter of the two applies).
    pub stress: Option<(Arc<attitude_service::driver::Stress>, Duration)>,
}

impl std::fmt::Debug for PregreetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PregreetConfig").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Memory {
    Passed,
    Failed,
}

/// What the pregreet test remembers about clients (passed or failed, until when). The process
/// keeps one for every listener and every configuration a reload brings: a client that passed
/// on 25 is not paused again on 587, nor after a reload.
#[derive(Default)]
pub struct PregreetMemory {
    memory: Mutex<HashMap<IpAddr, (Memory, Instant)>>,
}

impl std::fmt::Debug for PregreetMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PregreetMemory").finish_non_exhaustive()
    }
}

/// A pregreet test's settings over the memory it shares.
pub(super) struct Shared {
    pub(super) config: PregreetConfig,
    memory: Arc<PregreetMemory>,
}

impl Shared {
    pub(super) fn recall(&self, client: IpAddr) -> Option<Memory> {
        let memory = self.memory.memory.lock().expect("pregreet lock");
        memory
            .get(&client)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(m, _)| *m)
    }

    /// The fleet's verdict on a client this process does not know (kept here too).
    pub(super) async fn recall_fleet(&self, client: IpAddr) -> Option<Memory> {
        let fleet = self.config.fleet.as_ref()?;
        let (value, left) = fleet.get(&client.to_string()).await?;
        let what = match value.as_str() {
            "pass" => Memory::Passed,
            "fail" => Memory::Failed,
            _ => return None,
        };
        self.keep(client, what, left);
        Some(what)
    }

    /// A verdict of this process's: kept here and told to the fleet.
    pub(super) fn remember(&self, client: IpAddr, what: Memory) {
        let (ttl, word) = match what {
            Memory::Passed => (self.config.pass_ttl, "pass"),
            Memory::Failed => (self.config.fail_ttl, "fail"),
        };
        self.keep(client, what, ttl);
        if let Some(fleet) = &self.config.fleet {
            fleet.put(&client.to_string(), word.into(), ttl);
        }
    }

    fn keep(&self, client: IpAddr, what: Memory, ttl: Duration) {
        let now = Instant::now();
        let mut memory = self.memory.memory.lock().expect("pregreet lock");
        if memory.len() >= self.config.max_entries {
            memory.retain(|_, (_, until)| *until > now);
            if memory.len() >= self.config.max_entries {
                // Still full of live entries: forget them (clients take the test again).
                memory.clear();
            }
        }
        memory.insert(client, (what, now + ttl));
    }
}

/// Adds [`Pregreet`]. Clones share what is remembered.
#[derive(Clone)]
pub struct PregreetLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PregreetLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PregreetLayer").finish_non_exhaustive()
    }
}

impl PregreetLayer {
    /// A layer with these settings, and a memory of its own.
    pub fn new(config: PregreetConfig) -> Self {
        Self::sharing(config, Arc::default())
    }

    /// A layer with these settings over `memory`, which other layers share.
    pub fn sharing(config: PregreetConfig, memory: Arc<PregreetMemory>) -> Self {
        Self {
            shared: Arc::new(Shared { config, memory }),
        }
    }
}

impl<S> Layer<S> for PregreetLayer {
    type Service = Pregreet<S>;

    fn layer(&self, inner: S) -> Pregreet<S> {
        Pregreet::new(inner, self.shared.clone())
    }
}
