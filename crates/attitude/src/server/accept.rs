//! The accept loop of one listener on one worker thread, and PROXY protocol in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use attitude_service::driver::DriverMetrics;
use attitude_service::replies;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use super::reload::Generation;
use crate::stack::connection::Connection;
use crate::stack::pools::Pools;

/// What an accept loop shares with the rest of the process.
pub(super) struct Accept<'a> {
    pub(super) tracker: &'a TaskTracker,
    pub(super) stop: &'a CancellationToken,
    pub(super) ids: &'a AtomicU64,
    /// Set on SIGTERM: new clients get 421 until the listener closes.
    pub(super) draining: &'a AtomicBool,
    pub(super) metrics: &'a DriverMetrics,
    /// The backend pools: with no backend up in any, new clients get 421 at the greeting.
    pub(super) pools: &'a Pools,
    /// Every listener's current stack.
    pub(super) live: &'a ArcSwap<Generation>,
}

/// Connections whose PROXY header is read wait for the accept loop in a queue this long.
const PROXIED_QUEUE: usize = 1024;

impl Accept<'_> {
    /// Accepts on `listener`, the `index`th listener, until the drain closes it.
    pub(super) async fn run(&self, listener: &TcpListener, index: usize) {
        let Accept {
            tracker,
            stop,
            ids,
            draining,
            metrics,
            pools,
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
            if !pools.available() {
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
