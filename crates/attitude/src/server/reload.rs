//! What the running process keeps of its configuration, and the reload: a new configuration is
//! validated, built into a new generation of stacks and swapped in; running sessions keep theirs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use attitude_service::driver::Shutdown;
use metrics::{Counter, Gauge};
use tokio_util::sync::CancellationToken;

use super::proxy_in::ProxyIn;
use crate::config::{Config, EffectiveListener};
use crate::stack::connection::{self, ConnectionService};
use crate::stack::{Shared, Stack};

/// One listener's stack as the current configuration built it; a reload replaces it, and
/// sessions already running keep the one they started with.
pub(super) struct Live {
    pub(super) connections: Box<dyn Fn() -> ConnectionService + Send + Sync>,
    pub(super) proxy: ProxyIn,
    /// Ends the stack's housekeeping tasks once it is replaced.
    housekeeping: CancellationToken,
}

/// Every listener's stack, from one configuration.
pub(super) struct Generation {
    pub(super) id: u64,
    /// In the order of the bound listeners.
    pub(super) listeners: Vec<Arc<Live>>,
}

/// Builds one listener's stack.
pub(super) fn live(
    listener: &EffectiveListener,
    top: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
) -> Result<Arc<Live>, String> {
    let housekeeping = CancellationToken::new();
    let stack = Stack::new(listener, shared, housekeeping.clone())?;
    let connections = connection::build(&listener.config, stack, shared, shutdown.clone())?;
    Ok(Arc::new(Live {
        connections: Box::new(connections),
        proxy: ProxyIn::new(&top.proxy_protocol, listener.proxy_protocol),
        housekeeping,
    }))
}

/// What the running process keeps of its configuration, to apply a reload.
pub(super) struct Running {
    pub(super) config: Config,
    /// The bound listeners (name, configured addresses), in order.
    bound: Vec<(String, Vec<SocketAddr>)>,
    pub(super) shared: Shared,
    shutdown: Shutdown,
    live: Arc<ArcSwap<Generation>>,
    reloads: [Counter; 2],
    last_reload: Gauge,
    /// 1 when the last reload was applied (or none was tried), 0 when it was refused.
    last_reload_ok: Gauge,
    /// The last reload's configuration was refused (the running one stayed).
    pub(super) reload_refused: bool,
    /// What the configuration's list files held when it was applied.
    list_files: String,
}

impl Running {
    /// The running process's state after start, with its reload metrics registered.
    pub(super) fn new(
        config: Config,
        listeners: &[EffectiveListener],
        shared: Shared,
        shutdown: Shutdown,
        live: Arc<ArcSwap<Generation>>,
    ) -> Self {
        let list_files = config.list_files();
        let running = Self {
            bound: listeners
                .iter()
                .map(|l| (l.name.clone(), l.addresses.clone()))
                .collect(),
            config,
            shared,
            shutdown,
            live,
            reloads: [
                metrics::counter!("attitude_config_reload_total", "result" => "ok"),
                metrics::counter!("attitude_config_reload_total", "result" => "error"),
            ],
            last_reload: metrics::gauge!("attitude_config_last_reload_success_timestamp_seconds"),
            last_reload_ok: metrics::gauge!("attitude_config_last_reload_successful"),
            reload_refused: false,
            list_files,
        };
        running.last_reload_ok.set(1.0);
        running.reloads.iter().for_each(|c| c.increment(0));
        running
    }

    /// Applies a new, validated configuration: every listener that is still bound gets a stack
    /// built from it; new sessions use it, running ones keep theirs. What needs a restart is
    /// logged and stays as it was.
    fn apply(&mut self, new: Config) -> Result<(), String> {
        let listeners = new.effective_listeners().map_err(|e| e.to_string())?;
        let mut restart = restart_needed(&self.config, &new);
        // A policy turned on by this reload may need the resolver or the greylist store.
        self.shared.provide(&new, &listeners)?;
        // New and changed pools start before the stacks that route to them are built; they
        // replace the running ones once every stack is.
        self.shared
            .pools
            .stage(&new, self.shared.resolver.as_ref())?;
        let current = self.live.load_full();
        let mut next = Vec::with_capacity(self.bound.len());
        for (i, (name, addr)) in self.bound.iter().enumerate() {
            match listeners.iter().find(|l| &l.name == name) {
                Some(l) => {
                    if l.addresses != *addr {
                        restart.push(format!(
                            "listener {name} address {addr:?} -> {:?}",
                            l.addresses
                        ));
                    }
                    match live(l, &new, &self.shared, &self.shutdown) {
                        Ok(stack) => next.push(stack),
                        Err(error) => {
                            // Nothing is swapped in: end what was built for nothing.
                            self.shared.pools.abort();
                            for built in &next {
                                if !current.listeners.iter().any(|c| Arc::ptr_eq(c, built)) {
                                    built.housekeeping.cancel();
                                }
                            }
                            return Err(error);
                        }
                    }
                }
                None => {
                    restart.push(format!("listener {name} removed"));
                    next.push(current.listeners[i].clone());
                }
            }
        }
        for l in &listeners {
            if !self.bound.iter().any(|(name, _)| name == &l.name) {
                restart.push(format!("listener {} added", l.name));
            }
        }
        self.shared.pools.commit();
        let old = self.live.swap(Arc::new(Generation {
            id: current.id + 1,
            listeners: next,
        }));
        for l in &old.listeners {
            if !self.live.load().listeners.iter().any(|n| Arc::ptr_eq(n, l)) {
                l.housekeeping.cancel();
            }
        }
        self.config = new;
        if restart.is_empty() {
            tracing::info!("configuration reloaded");
        } else {
            tracing::warn!(needs_restart = ?restart, "configuration reloaded; these changes need a restart and are not applied");
        }
        Ok(())
    }

    /// Loads and applies; counts and logs the outcome (a configuration that did not change is
    /// neither applied nor counted).
    pub(super) fn reload(&mut self, load: &(dyn Fn() -> Result<Config, String> + Send + Sync)) {
        let result = load().and_then(|new| {
            let files = new.list_files();
            if new.to_toml() == self.config.to_toml() && files == self.list_files {
                tracing::debug!("configuration unchanged");
                return Ok(false);
            }
            self.apply(new)?;
            self.list_files = files;
            Ok(true)
        });
        self.reload_refused = result.is_err();
        match result {
            Ok(false) => {}
            Ok(true) => {
                self.reloads[0].increment(1);
                self.last_reload_ok.set(1.0);
                self.last_reload.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
            }
            Err(error) => {
                self.reloads[1].increment(1);
                self.last_reload_ok.set(0.0);
                tracing::error!(%error, "configuration reload refused; the running configuration stays");
            }
        }
    }
}

/// The process-wide settings that differ between `old` and `new` (they need a restart).
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (old_table, new_table) = (
        toml::Table::try_from(old).ok(),
        toml::Table::try_from(new).ok(),
    );
    let section =
        |t: &Option<toml::Table>, name: &str| t.as_ref().and_then(|t| t.get(name).cloned());
    for name in ["tls", "admin", "workers", "dns", "log", "listen"] {
        if section(&old_table, name) != section(&new_table, name) {
            out.push(format!("[{name}]"));
        }
    }
    // The greylist store's settings (pools and routes are applied: `stack::pools`).
    let mut old_greylist = old.greylist.clone();
    old_greylist.enabled = new.greylist.enabled;
    if toml::Value::try_from(&old_greylist).ok() != toml::Value::try_from(&new.greylist).ok() {
        out.push("[greylist] store settings".into());
    }
    out
}

/// Events in the directories of the configuration files (see `attitude_edge::watch`).
pub(super) fn watch_files(
    paths: &[PathBuf],
) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let files: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let watcher = attitude_edge::watch::directories_of(&files, "configuration file", move || {
        let _ = tx.send(());
    })
    .map_err(|e| e.to_string())?;
    // The watcher lives as long as the process.
    std::mem::forget(watcher);
    Ok(rx)
}
