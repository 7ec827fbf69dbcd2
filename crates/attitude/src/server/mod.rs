//! `attitude serve`: the process. In the order it runs:
//!
//! 1. `listen`: every listener's sockets bound, one per worker thread (SO_REUSEPORT);
//! 2. the shared parts (`stack::Shared`) and the first generation of stacks (`reload`);
//! 3. the admin server, then one worker thread per core, each accepting on its own sockets
//!    (`accept`);
//! 4. the announcement (and `READY=1` to systemd, `notify`), then signals and file changes
//!    until SIGTERM (`reload` on SIGHUP or a changed file);
//! 5. the drain.

mod accept;
mod listen;
mod notify;
mod proxy_in;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use attitude_service::driver::Shutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::stack::Shared;
use accept::Accept;
pub(crate) use listen::{announce, bind};
use notify::{Notifier, status_line};
use reload::{Generation, Running, live, watch_files};

/// How long sessions get to write their 421 after the drain grace has run out.
const HARD_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A reload's way of reading the configuration again (file, flags, environment).
type Load = dyn Fn() -> Result<Config, String> + Send + Sync;

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
    load: Box<Load>,
    watch: Vec<PathBuf>,
) -> Result<(), String> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = config.effective_listeners().map_err(|e| e.to_string())?;
    // One set of sockets (one per worker) per listener address, each with its listener's index.
    let mut sockets: Vec<(usize, Vec<std::net::TcpListener>)> = Vec::new();
    let mut bound = Vec::with_capacity(listeners.len());
    for (i, l) in listeners.iter().enumerate() {
        let mut first = None;
        for addr in &l.addresses {
            let socks = match listen::bind_reuseport(*addr, workers, &l.name) {
                Ok(socks) => socks,
                // `["0.0.0.0:25", "[::]:25"]` on a host without IPv6 (or without IPv4): the
                // listener serves the family that is there.
                Err(error) if l.addresses.len() > 1 && error.family_missing() => {
                    tracing::warn!(listener = %l.name, %addr, "{error}; serving the listener's other addresses");
                    continue;
                }
                Err(error) => return Err(error.to_string()),
            };
            first.get_or_insert(socks[0].local_addr().map_err(|e| e.to_string())?);
            sockets.push((i, socks));
        }
        let Some(first) = first else {
            return Err(format!(
                "listener {} could bind none of its addresses {:?}",
                l.name, l.addresses
            ));
        };
        bound.push((l.name.clone(), first));
    }
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    main.block_on(async move {
        let ready = Arc::new(AtomicBool::new(true));
        let admin_stop = CancellationToken::new();
        let shutdown = Shutdown::default();
        let fleet = crate::stack::fleet::connect(&config.state).await?;
        let shared = Shared::new(&config, &listeners, fleet)?;
        // The first clients should be offered what the backends offer: their first health
        // checks (or EHLOs) come first, within the health check timeout.
        shared.pools.settle().await;
        let mut announced = listen::announced(&bound);
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
                    pools: shared.pools.clone(),
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
        let workers_share = Workers {
            live: Arc::new(ArcSwap::from_pointee(first)),
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            draining: Arc::new(AtomicBool::new(false)),
            ids: Arc::new(AtomicU64::new(1)),
        };
        for n in 0..workers {
            let mine: Vec<(usize, std::net::TcpListener)> = sockets
                .iter_mut()
                .map(|(i, socks)| (*i, socks.remove(0)))
                .collect();
            workers_share.spawn(n, mine, &shared)?;
        }
        // Signals and file changes are handled from before the announcement (a script may send
        // one at once).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let mut stopping = shutdown_signal();
        let mut changed = watch_files(&watch)?;
        // The greylist file is written while running too, so a crash loses at most an interval.
        let save_every = config.greylist.save_interval;
        let mut save = tokio::time::interval(save_every.max(Duration::from_secs(1)));
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save.tick().await;
        let parts: Vec<(&str, SocketAddr)> =
            announced.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        announce(&parts);
        tracing::info!(listeners = ?bound, workers, backends = ?config.backend.servers, "attitude serving");

        let mut running = Running::new(
            config,
            &listeners,
            shared,
            shutdown.clone(),
            workers_share.live.clone(),
        );
        let mut notifier = Notifier::from_env();
        notifier.ready(status_line(&running, 0));
        let mut status = tokio::time::interval(notify::STATUS_EVERY);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status.tick().await;
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    notifier.reloading();
                    if let Some(tls) = &running.shared.tls {
                        let _ = tls.reload();
                    }
                    running.reload(load.as_ref());
                    notifier.ready(status_line(&running, workers_share.tracker.len()));
                }
                _ = status.tick(), if notifier.enabled() => {
                    notifier.status(status_line(&running, workers_share.tracker.len()));
                }
                _ = save.tick(), if !save_every.is_zero() => {
                    if let Some(greylist) = running.shared.greylist.clone() {
                        tokio::task::spawn_blocking(move || greylist.save());
                    }
                }
                Some(()) = changed.recv() => {
                    // Let a burst of events (an editor's save, a ConfigMap swap) settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while changed.try_recv().is_ok() {}
                    running.reload(load.as_ref());
                }
            }
        }
        ready.store(false, Ordering::Relaxed);
        notifier.stopping(workers_share.tracker.len());
        workers_share.drain(&running.config, &shutdown).await;
        running.shared.save_state();
        admin_stop.cancel();
        tracing::info!("stopped");
        Ok(())
    })
}

/// What the worker threads share with the main thread.
struct Workers {
    /// Every listener's current stack.
    live: Arc<ArcSwap<Generation>>,
    /// Every session of every thread.
    tracker: TaskTracker,
    /// Closes the listeners (after `drain_delay`).
    stop_accepting: CancellationToken,
    /// Set on SIGTERM: new clients get 421 until the listeners close.
    draining: Arc<AtomicBool>,
    /// Session ids.
    ids: Arc<AtomicU64>,
}

impl Workers {
    /// Worker thread `n`: a single-threaded runtime accepting on `sockets` (one per listener
    /// address, with the index of its listener) until the drain, and keeping its sessions until
    /// they end.
    fn spawn(
        &self,
        n: usize,
        sockets: Vec<(usize, std::net::TcpListener)>,
        shared: &Shared,
    ) -> Result<(), String> {
        let live = self.live.clone();
        let tracker = self.tracker.clone();
        let stop = self.stop_accepting.clone();
        let ids = self.ids.clone();
        let draining = self.draining.clone();
        let metrics = shared.driver_metrics.clone();
        let pools = shared.pools.clone();
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
                        pools: &pools,
                        live: &live,
                    };
                    let loops = sockets.into_iter().map(|(i, listener)| {
                        let accept = &accept;
                        async move {
                            let listener = TcpListener::from_std(listener).expect("tokio listener");
                            accept.run(&listener, i).await;
                        }
                    });
                    futures::future::join_all(loops).await;
                    // Keep this thread's sessions running until the drain is over.
                    tracker.wait().await;
                });
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start a worker thread: {e}"))
    }

    /// The drain: for `drain_delay` the listeners still accept and answer new clients 421 (the
    /// load balancer is still sending a few), then close; idle sessions get 421 now, sessions
    /// in a transaction may finish it within `drain_grace`, then every session gets 421.
    async fn drain(&self, config: &Config, shutdown: &Shutdown) {
        let tracker = &self.tracker;
        self.draining.store(true, Ordering::Relaxed);
        shutdown.drain.cancel();
        tracker.close();
        let grace = config.timeouts.drain_grace;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(sessions = tracker.len(), ?grace, delay = ?config.timeouts.drain_delay, "draining");
        tokio::time::sleep(config.timeouts.drain_delay).await;
        self.stop_accepting.cancel();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = tracker.len(),
                "drain grace over; closing sessions with 421"
            );
            shutdown.hard.cancel();
            let _ = tokio::time::timeout(HARD_CLOSE_WAIT, tracker.wait()).await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called, not when
/// the future is first polled.
pub(crate) fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
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
