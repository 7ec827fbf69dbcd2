//! Listener, accept loop, signals and drain.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use attitude_service::driver::{DriverMetrics, Shutdown};
use attitude_service::replies;
use ipnet::IpNet;
use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use attitude_balance::Pool;

use crate::admin;
use crate::config::Config;
use crate::config::EffectiveListener;
use crate::stack::connection::{self, Connection, ConnectionService};
use crate::stack::{Shared, Stack};
use arc_swap::ArcSwap;
use attitude_edge::proxy;
use metrics::Gauge;
use std::path::PathBuf;

/// How long sessions get to write their 421 after the drain grace has run out.
const HARD_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Binds `addr`, with an error that says what to do.
pub(crate) async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} ({what}): {e}; pick another address or stop what uses it")
    })
}

/// Prints the bound addresses on stdout (one line, for scripts and tests).
pub(crate) fn announce(parts: &[(&str, std::net::SocketAddr)]) {
    let line: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {}", line.join(" "));
    let _ = out.flush();
}

/// Binds `workers` listening sockets on `addr` with SO_REUSEPORT (the kernel spreads new
/// connections over them); the first fixes the port when `addr` asks for port 0.
fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
    name: &str,
) -> Result<Vec<std::net::TcpListener>, String> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s)
            })
            .map_err(|e| {
                format!(
                    "cannot listen on {addr} (listener {name}): {e}; pick another address or stop \
                     what uses it"
                )
            })?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|e| e.to_string())?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One listener's stack as the current configuration built it; a reload replaces it, and
/// sessions already running keep the one they started with.
struct Live {
    connections: Box<dyn Fn() -> ConnectionService + Send + Sync>,
    proxy: ProxyIn,
    /// Ends the stack's housekeeping tasks once it is replaced.
    housekeeping: CancellationToken,
}

/// Every listener's stack, from one configuration.
struct Generation {
    id: u64,
    /// In the order of the bound listeners.
    listeners: Vec<Arc<Live>>,
}

/// Builds one listener's stack.
fn live(
    listener: &EffectiveListener,
    top: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
) -> Result<Arc<Live>, String> {
    let housekeeping = CancellationToken::new();
    let stack = Stack::new(listener, shared, housekeeping.clone());
    let connections = connection::build(&listener.config, stack, shutdown.clone())?;
    Ok(Arc::new(Live {
        connections: Box::new(connections),
        proxy: ProxyIn::new(&top.proxy_protocol, listener.proxy_protocol),
        housekeeping,
    }))
}

/// What the running process keeps of its configuration, to apply a reload.
struct Running {
    config: Config,
    /// The bound listeners (name, configured address), in order.
    bound: Vec<(String, SocketAddr)>,
    shared: Shared,
    shutdown: Shutdown,
    live: Arc<ArcSwap<Generation>>,
    reloads: [Counter; 2],
    last_reload: Gauge,
    /// 1 when the last reload was applied (or none was tried), 0 when it was refused.
    last_reload_ok: Gauge,
}

impl Running {
    /// Applies a new, validated configuration: every listener that is still bound gets a stack
    /// built from it; new sessions use it, running ones keep theirs. What needs a restart is
    /// logged and stays as it was.
    fn apply(&mut self, new: Config) -> Result<(), String> {
        let listeners = new.effective_listeners().map_err(|e| e.to_string())?;
        let mut restart = restart_needed(&self.config, &new);
        // A policy turned on by this reload may need the resolver or the greylist store.
        self.shared.provide(&new, &listeners)?;
        let current = self.live.load_full();
        let mut next = Vec::with_capacity(self.bound.len());
        for (i, (name, addr)) in self.bound.iter().enumerate() {
            match listeners.iter().find(|l| &l.name == name) {
                Some(l) => {
                    if l.address != *addr {
                        restart.push(format!("listener {name} address {addr} -> {}", l.address));
                    }
                    match live(l, &new, &self.shared, &self.shutdown) {
                        Ok(stack) => next.push(stack),
                        Err(error) => {
                            // Nothing is swapped in: end what was built for nothing.
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
        self.shared.pool.set_source("static", new.static_backends());
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

    /// Loads and applies; counts and logs the outcome. `false` when the configuration is
    /// unchanged (nothing counted).
    fn reload(&mut self, load: &(dyn Fn() -> Result<Config, String> + Send + Sync)) {
        let result = load().and_then(|new| {
            if new.to_toml() == self.config.to_toml() {
                tracing::debug!("configuration unchanged");
                return Ok(false);
            }
            self.apply(new).map(|()| true)
        });
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
    // The greylist store and the pool's settings; the static servers are applied.
    let mut old_backend = old.backend.clone();
    old_backend.servers = new.backend.servers.clone();
    if toml::Value::try_from(&old_backend).ok() != toml::Value::try_from(&new.backend).ok() {
        out.push("[backend] (other than servers)".into());
    }
    let mut old_greylist = old.greylist.clone();
    old_greylist.enabled = new.greylist.enabled;
    if toml::Value::try_from(&old_greylist).ok() != toml::Value::try_from(&new.greylist).ok() {
        out.push("[greylist] store settings".into());
    }
    out
}

/// Runs `attitude serve` until SIGTERM/SIGINT and the drain that follows. `load` reads the
/// configuration again (file, flags, environment) for a reload on SIGHUP or when
/// `watch` (the configuration file) changes.
///
/// Thread per core: each worker thread runs its own single-threaded runtime with its own
/// listening socket per listener, and a session lives on the thread that accepted it, so an
/// accepted connection never has to wake another thread. The limits' state is shared by all.
/// The main thread runs the admin server, the signals, reloads, housekeeping and the drain.
pub(crate) fn serve(
    config: Config,
    metrics: PrometheusHandle,
    load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    watch: Vec<PathBuf>,
) -> Result<(), String> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = config.effective_listeners().map_err(|e| e.to_string())?;
    let mut sockets = Vec::with_capacity(listeners.len());
    let mut bound = Vec::with_capacity(listeners.len());
    for l in &listeners {
        let socks = bind_reuseport(l.address, workers, &l.name)?;
        bound.push((
            l.name.clone(),
            socks[0].local_addr().map_err(|e| e.to_string())?,
        ));
        sockets.push(socks);
    }
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    main.block_on(async move {
        let ready = Arc::new(AtomicBool::new(true));
        let admin_stop = CancellationToken::new();
        let shutdown = Shutdown::default();
        let shared = Shared::new(&config, &listeners)?;
        let mut announced: Vec<(String, SocketAddr)> = bound
            .iter()
            .enumerate()
            .map(|(i, (name, addr))| {
                // The first listener is also announced as "smtp" (scripts and tests read it).
                (if i == 0 { "smtp".to_string() } else { name.clone() }, *addr)
            })
            .collect();
        if listeners.len() > 1 || listeners[0].name != "smtp" {
            announced.extend(bound.iter().take(1).cloned());
        }
        if let Some(addr) = config.admin {
            let admin_listener = bind(addr, "admin HTTP").await?;
            announced.push((
                "admin".into(),
                admin_listener.local_addr().map_err(|e| e.to_string())?,
            ));
            tokio::spawn(admin::serve(
                admin_listener,
                metrics,
                admin::Readiness {
                    serving: ready.clone(),
                    pool: shared.pool.clone(),
                },
                admin_stop.clone(),
            ));
        }
        let first = Generation {
            id: 0,
            listeners: listeners
                .iter()
                .map(|l| live(l, &config, &shared, &shutdown))
                .collect::<Result<_, _>>()?,
        };
        let live_stacks = Arc::new(ArcSwap::from_pointee(first));
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let draining = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(AtomicU64::new(1));
        for n in 0..workers {
            let mine: Vec<std::net::TcpListener> =
                sockets.iter_mut().map(|socks| socks.remove(0)).collect();
            let live_stacks = live_stacks.clone();
            let tracker = tracker.clone();
            let stop = stop_accepting.clone();
            let ids = ids.clone();
            let draining = draining.clone();
            let metrics = shared.driver_metrics.clone();
            let pool = shared.pool.clone();
            std::thread::Builder::new()
                .name(format!("attitude-{n}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    runtime.block_on(async move {
                        let accept = Accept {
                            tracker: &tracker,
                            stop: &stop,
                            ids: &ids,
                            draining: &draining,
                            metrics: &metrics,
                            pool: &pool,
                            live: &live_stacks,
                        };
                        let loops = mine.into_iter().enumerate().map(|(i, listener)| {
                            let accept = &accept;
                            async move {
                                let listener =
                                    TcpListener::from_std(listener).expect("tokio listener");
                                accept.run(&listener, i).await;
                            }
                        });
                        futures::future::join_all(loops).await;
                        // Keep this thread's sessions running until the drain is over.
                        tracker.wait().await;
                    });
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        }
        let parts: Vec<(&str, SocketAddr)> =
            announced.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        // Signals and file changes are handled from before the announcement (a script may send
        // one at once).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let stopping = shutdown_signal();
        let mut changed = watch_files(&watch)?;
        announce(&parts);
        tracing::info!(listeners = ?bound, workers, backends = ?config.backend.servers, "attitude serving");

        let mut running = Running {
            bound: listeners
                .iter()
                .map(|l| (l.name.clone(), l.address))
                .collect(),
            config,
            shared,
            shutdown: shutdown.clone(),
            live: live_stacks,
            reloads: [
                metrics::counter!("attitude_config_reload_total", "result" => "ok"),
                metrics::counter!("attitude_config_reload_total", "result" => "error"),
            ],
            last_reload: metrics::gauge!("attitude_config_last_reload_success_timestamp_seconds"),
            last_reload_ok: metrics::gauge!("attitude_config_last_reload_successful"),
        };
        running.last_reload_ok.set(1.0);
        running.reloads.iter().for_each(|c| c.increment(0));
        let mut stopping = stopping;
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if let Some(tls) = &running.shared.tls {
                        let _ = tls.reload();
                    }
                    running.reload(load.as_ref());
                }
                Some(()) = changed.recv() => {
                    // Let a burst of events (an editor's save, a ConfigMap swap) settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while changed.try_recv().is_ok() {}
                    running.reload(load.as_ref());
                }
            }
        }
        let config = &running.config;
        // Draining: not ready; for `drain_delay` the listener still accepts and answers new
        // clients 421 (the load balancer is still sending a few), then closes; idle sessions
        // get 421 now, sessions in a transaction may finish it within the grace period.
        ready.store(false, Ordering::Relaxed);
        draining.store(true, Ordering::Relaxed);
        shutdown.drain.cancel();
        tracker.close();
        let grace = config.timeouts.drain_grace;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(sessions = tracker.len(), ?grace, delay = ?config.timeouts.drain_delay, "draining");
        tokio::time::sleep(config.timeouts.drain_delay).await;
        stop_accepting.cancel();
        if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(
                sessions = tracker.len(),
                "drain grace over; closing sessions with 421"
            );
            shutdown.hard.cancel();
            let _ = tokio::time::timeout(HARD_CLOSE_WAIT, tracker.wait()).await;
        }
        running.shared.save_state();
        admin_stop.cancel();
        tracing::info!("stopped");
        Ok(())
    })
}

/// Events in the directories of the configuration files (see `attitude_edge::watch`).
fn watch_files(paths: &[PathBuf]) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, String> {
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

/// What an accept loop shares with the rest of the process.
struct Accept<'a> {
    tracker: &'a TaskTracker,
    stop: &'a CancellationToken,
    ids: &'a AtomicU64,
    /// Set on SIGTERM: new clients get 421 until the listener closes.
    draining: &'a AtomicBool,
    metrics: &'a DriverMetrics,
    /// The backend pool: with no backend up, new clients get 421 at the greeting.
    pool: &'a Pool,
    /// Every listener's current stack.
    live: &'a ArcSwap<Generation>,
}

/// Connections whose PROXY header is read wait for the accept loop in a queue this long.
const PROXIED_QUEUE: usize = 1024;

impl Accept<'_> {
    /// Accepts on `listener`, the `index`th listener, until the drain closes it.
    async fn run(&self, listener: &TcpListener, index: usize) {
        let Accept {
            tracker,
            stop,
            ids,
            draining,
            metrics,
            pool,
            live,
        } = self;
        // This listener's stack, replaced when a reload makes a new generation.
        let mut generation = live.load().id;
        let mut current = live.load().listeners[index].clone();
        let mut connections = (current.connections)();
        // PROXY headers are read off the accept loop (a slow sender must not hold it up); the
        // connections come back here, with the address their header carries.
        let (proxied_tx, mut proxied) =
            tokio::sync::mpsc::channel::<(TcpStream, SocketAddr)>(PROXIED_QUEUE);
        loop {
            let (io, client) = tokio::select! {
                _ = stop.cancelled() => return,
                Some(pair) = proxied.recv() => pair,
                accepted = listener.accept() => match accepted {
                    Ok((io, peer)) if current.proxy.enabled => {
                        current.proxy.start(io, peer, &proxied_tx);
                        continue;
                    }
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if draining.load(Ordering::Relaxed) {
                // One small write to a fresh socket does not block; then close.
                let _ = io.try_write(replies::shutting_down().to_wire().as_bytes());
                metrics.record_refused();
                continue;
            }
            if !pool.available() {
                // Every backend is down: say so now rather than take a session that can only
                // end in 451s. The client retries later or tries the next MX.
                let _ = io.try_write(replies::no_mail_server().to_wire().as_bytes());
                metrics.record_refused();
                continue;
            }
            let now = live.load();
            if now.id != generation {
                generation = now.id;
                current = now.listeners[index].clone();
                connections = (current.connections)();
            }
            let conn = Connection {
                io,
                id: ids.fetch_add(1, Ordering::Relaxed),
                client,
                marks: Arc::default(),
            };
            // The connection stack never waits: its layers refuse instead (load shedding).
            let Ok(service) = connections.ready().await;
            let mut session = service.call(conn);
            // A refusal (a 421 written to a fresh socket) is usually done at the first poll: no
            // task for it, unless it is held for `refusal_delay`. Under a connection flood that is
            // most of the work.
            if std::future::Future::poll(
                session.as_mut(),
                &mut std::task::Context::from_waker(std::task::Waker::noop()),
            )
            .is_pending()
            {
                tracker.spawn(session);
            }
        }
    }
}

/// `[proxy_protocol]` at accept time: who may send a header, and how long it may take.
#[derive(Clone)]
pub(crate) struct ProxyIn {
    enabled: bool,
    sources: Arc<[IpNet]>,
    timeout: Duration,
    results: [Counter; 5],
}

impl ProxyIn {
    fn new(config: &crate::config::ProxyProtocol, enabled: bool) -> Self {
        let result =
            |r: &'static str| metrics::counter!("attitude_proxy_protocol_total", "result" => r);
        Self {
            enabled,
            sources: config.sources.clone().into(),
            timeout: config.header_timeout,
            results: [
                result("ok"),
                result("local"),
                result("untrusted"),
                result("invalid"),
                result("timeout"),
            ],
        }
    }

    /// Reads the header of a connection from `peer` in a task of its own, and queues the
    /// connection with the client address it carries; a peer outside `sources` is closed.
    fn start(
        &self,
        mut io: TcpStream,
        peer: SocketAddr,
        queue: &tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>,
    ) {
        let ip = attitude_service::address::canonical_ip(peer.ip());
        if !self.sources.iter().any(|n| n.contains(&ip)) {
            self.results[2].increment(1);
            tracing::debug!(%peer, "PROXY header from an untrusted peer: closed");
            return;
        }
        let this = self.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            match proxy::read_header(&mut io, this.timeout).await {
                Ok(source) => {
                    this.results[usize::from(source.is_none())].increment(1);
                    let _ = queue.send((io, source.unwrap_or(peer))).await;
                }
                Err(error) => {
                    let timeout = matches!(error, proxy::ProxyError::Timeout(_));
                    this.results[if timeout { 4 } else { 3 }].increment(1);
                    tracing::info!(%peer, %error, "PROXY header refused");
                }
            }
        });
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called, not when
/// the future is first polled.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    Box::pin(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}
