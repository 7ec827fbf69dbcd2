//! Listener, accept loop, signals and drain.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use attitude_service::driver::Shutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::admin;
use crate::config::Config;
use crate::connection::{self, Connection, ConnectionService};
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

/// Runs `attitude serve` until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(config: Config, metrics: PrometheusHandle) -> Result<(), String> {
    let listener = bind(config.listen, "SMTP").await?;
    let smtp_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let ready = Arc::new(AtomicBool::new(true));
    let admin_stop = CancellationToken::new();
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
            ready.clone(),
            admin_stop.clone(),
        ));
    }
    announce(&announced);
    tracing::info!(smtp = %smtp_addr, backends = ?config.backend.servers, "attitude serving");

    let shutdown = Shutdown::default();
    let mut connections =
        connection::build(&config.connections, Stack::new(&config), shutdown.clone());
    let tracker = TaskTracker::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    accept_loop(&listener, &mut connections, &tracker, &mut signal).await;

    // Draining: not ready, no new sessions; idle sessions get 421 now, sessions in a
    // transaction may finish it within the grace period.
    ready.store(false, Ordering::Relaxed);
    drop(listener);
    shutdown.drain.cancel();
    tracker.close();
    let grace = config.timeouts.drain_grace;
    tracing::info!(sessions = tracker.len(), ?grace, "draining");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "drain grace over; closing sessions with 421"
        );
        shutdown.hard.cancel();
        let _ = tokio::time::timeout(HARD_CLOSE_WAIT, tracker.wait()).await;
    }
    admin_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(
    listener: &TcpListener,
    connections: &mut ConnectionService,
    tracker: &TaskTracker,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let ids = AtomicU64::new(1);
    loop {
        let (io, client) = tokio::select! {
            _ = signal.as_mut() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            io,
            id: ids.fetch_add(1, Ordering::Relaxed),
            client,
        };
        // The connection stack never waits: its layers refuse instead (load shedding).
        let Ok(service) = connections.ready().await;
        let mut session = service.call(conn);
        // A refusal (a 421 written to a fresh socket) is usually done at the first poll: no
        // task for it. Under a connection flood that is most of the work.
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
