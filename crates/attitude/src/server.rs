//! Listener, accept loop, signals and drain.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use attitude_service::driver::{DriverMetrics, Shutdown};
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
use crate::connection::{self, Connection, ConnectionService};
use crate::proxy;
use crate::stack::Stack;

/// How long sessions get to write their 421 after the drain grace has run out.
const HARD_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} ({what}): {e}; pick another address or stop what uses it")
    })
}

/// Prints the bound addresses on stdout (one line, for scripts and tests).
pub fn announce(parts: &[(&str, std::net::SocketAddr)]) {
    let line: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {}", line.join(" "));
    let _ = out.flush();
}

/// Binds `workers` listening sockets on `addr` with SO_REUSEPORT (the kernel spreads new
/// connections over them); the first fixes the port when `addr` asks for port 0.
fn bind_reuseport(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>, String> {
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
                    "cannot listen on {addr} (SMTP): {e}; pick another address or stop what uses it"
                )
            })?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|e| e.to_string())?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs `attitude serve` until SIGTERM/SIGINT and the drain that follows.
///
/// Thread per core: each worker thread runs its own single-threaded runtime with its own
/// listening socket, and a session lives on the thread that accepted it, so an accepted
/// connection never has to wake another thread. The limits' state is shared by all. The main
/// thread runs the admin server, the signals, housekeeping and the drain.
pub fn serve(config: Config, metrics: PrometheusHandle) -> Result<(), String> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = bind_reuseport(config.listen, workers)?;
    let smtp_addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    main.block_on(async move {
        let ready = Arc::new(AtomicBool::new(true));
        let admin_stop = CancellationToken::new();
        let shutdown = Shutdown::default();
        let stack = Stack::new(&config)?;
        let mut announced = vec![("smtp", smtp_addr)];
        if let Some(addr) = config.admin {
            let admin_listener = bind(addr, "admin HTTP").await?;
            announced.push((
                "admin",
                admin_listener.local_addr().map_err(|e| e.to_string())?,
            ));
            tokio::spawn(admin::serve(
                admin_listener,
                metrics,
                admin::Readiness {
                    serving: ready.clone(),
                    pool: stack.pool().clone(),
                },
                admin_stop.clone(),
            ));
        }

        let connections = Arc::new(connection::build(
            &config,
            stack.clone(),
            shutdown.clone(),
        )?);
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let draining = Arc::new(AtomicBool::new(false));
        let proxy_in = ProxyIn::new(&config.proxy_protocol);
        let ids = Arc::new(AtomicU64::new(1));
        for (n, listener) in listeners.into_iter().enumerate() {
            let connections = connections.clone();
            let tracker = tracker.clone();
            let stop = stop_accepting.clone();
            let ids = ids.clone();
            let draining = draining.clone();
            let metrics = stack.driver_metrics.clone();
            let proxy = proxy_in.clone();
            let pool = stack.pool().clone();
            std::thread::Builder::new()
                .name(format!("attitude-{n}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("tokio listener");
                        let mut service = connections();
                        let accept = Accept {
                            tracker: &tracker,
                            stop: &stop,
                            ids: &ids,
                            draining: &draining,
                            metrics: &metrics,
                            proxy: &proxy,
                            pool: &pool,
                        };
                        accept.run(&listener, &mut service).await;
                        drop(listener);
                        // Keep this thread's sessions running until the drain is over.
                        tracker.wait().await;
                    });
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        }
        announce(&announced);
        tracing::info!(smtp = %smtp_addr, workers, backends = ?config.backend.servers, "attitude serving");

        shutdown_signal().await;
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
        stack.save_state();
        admin_stop.cancel();
        tracing::info!("stopped");
        Ok(())
    })
}

/// What an accept loop shares with the rest of the process.
struct Accept<'a> {
    tracker: &'a TaskTracker,
    stop: &'a CancellationToken,
    ids: &'a AtomicU64,
    /// Set on SIGTERM: new clients get 421 until the listener closes.
    draining: &'a AtomicBool,
    metrics: &'a DriverMetrics,
    /// PROXY protocol in.
    proxy: &'a ProxyIn,
    /// The backend pool: with no backend up, new clients get 421 at the greeting.
    pool: &'a Pool,
}

/// Connections whose PROXY header is read wait for the accept loop in a queue this long.
const PROXIED_QUEUE: usize = 1024;

impl Accept<'_> {
    async fn run(&self, listener: &TcpListener, connections: &mut ConnectionService) {
        let Accept {
            tracker,
            stop,
            ids,
            draining,
            metrics,
            proxy,
            pool,
        } = self;
        // PROXY headers are read off the accept loop (a slow sender must not hold it up); the
        // connections come back here, with the address their header carries.
        let (proxied_tx, mut proxied) =
            tokio::sync::mpsc::channel::<(TcpStream, SocketAddr)>(PROXIED_QUEUE);
        loop {
            let (io, client) = tokio::select! {
                _ = stop.cancelled() => return,
                Some(pair) = proxied.recv() => pair,
                accepted = listener.accept() => match accepted {
                    Ok((io, peer)) if proxy.enabled => {
                        proxy.start(io, peer, &proxied_tx);
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
                let _ = io.try_write(b"421 4.3.2 Service shutting down; try another server\r\n");
                metrics.record_refused();
                continue;
            }
            if !pool.available() {
                // Every backend is down: say so now rather than take a session that can only
                // end in 451s. The client retries later or tries the next MX.
                let _ = io.try_write(b"421 4.3.2 No mail server available; try again later\r\n");
                metrics.record_refused();
                continue;
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
pub struct ProxyIn {
    enabled: bool,
    sources: Arc<[IpNet]>,
    timeout: Duration,
    results: [Counter; 5],
}

impl ProxyIn {
    fn new(config: &crate::config::ProxyProtocol) -> Self {
        let result =
            |r: &'static str| metrics::counter!("attitude_proxy_protocol_total", "result" => r);
        Self {
            enabled: config.enabled,
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
