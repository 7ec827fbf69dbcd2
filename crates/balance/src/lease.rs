//! A backend connection lent to one session for one transaction (or, pinned, for the session).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use crate::backend::{Backend, FailureKind, PooledConn};
use crate::config::PoolConfig;
use crate::conn::BackendConn;
use crate::identity::{ClientIdentity, IdentityMode};
use crate::registry::Registry;

/// A backend connection lent to a session. While busy it counts as a transaction in flight on
/// its backend (the p2c load). [`Lease::release`] gives it back to the pool; dropping it closes
/// the connection (the way to abort a transaction the backend must not keep).
#[derive(Debug)]
pub struct Lease {
    config: Arc<PoolConfig>,
    /// Failures count toward the backend's ejection.
    registry: Arc<Registry>,
    backend: Arc<Backend>,
    /// Boxed: a session keeps a lease between transactions, and idle sessions should be small.
    conn: Option<Box<PooledConn>>,
    reused: bool,
    pinned: bool,
    busy: bool,
    started: Instant,
}

impl Lease {
    pub(crate) fn new(
        config: Arc<PoolConfig>,
        registry: Arc<Registry>,
        backend: Arc<Backend>,
        conn: Box<PooledConn>,
        reused: bool,
    ) -> Self {
        backend.begin();
        Self {
            config,
            registry,
            backend,
            conn: Some(conn),
            reused,
            pinned: false,
            busy: true,
            started: Instant::now(),
        }
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        &mut self
            .conn
            .as_mut()
            .expect("a lease holds its connection until released")
            .conn
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr()
    }

    /// Came from the idle pool (it may have gone stale: one silent retry is fair).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Keeps the connection for this session only (it authenticated: never pooled).
    pub fn pin(&mut self) {
        self.pinned = true;
    }

    /// The XFORWARD lines that tell the backend who the client of the transaction `ident` is
    /// (none unless the backend's identity is `xforward` and it offers XFORWARD).
    pub fn xforward(&self, identity: &ClientIdentity, ident: &str) -> Vec<String> {
        if self.backend.identity() != IdentityMode::Xforward {
            return Vec::new();
        }
        self.caps()
            .xforward
            .map(|attrs| identity.xforward_lines(attrs, ident))
            .unwrap_or_default()
    }

    /// What the backend offered on this connection.
    pub fn caps(&self) -> crate::caps::BackendCaps {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until released")
            .conn
            .caps()
    }

    /// Whether [`Lease::release`] returns it to the pool; otherwise the session keeps it for
    /// its next transaction (PROXY identity, XCLIENT once per connection, authenticated) and
    /// closes it at its end.
    pub fn poolable(&self) -> bool {
        !self.pinned && self.backend.shareable() && self.config.reuse
    }

    /// The backend answered as a healthy server does.
    pub fn success(&self) {
        self.backend.record_success();
    }

    /// The backend failed (counts toward its ejection).
    pub fn failure(&self, kind: FailureKind) {
        self.registry.report_failure(&self.backend, kind);
    }

    /// A failover away from this backend.
    pub fn failed_over(&self) {
        self.backend.metrics.failovers.increment(1);
    }

    /// A transaction ended with the backend's reply to end of data.
    pub fn transaction_done(&mut self) {
        let conn = self.conn.as_mut().expect("held");
        conn.transactions += 1;
        self.backend.observe(self.started.elapsed());
        self.success();
        self.started = Instant::now();
    }

    /// The session keeps this lease between transactions: it stops counting as in flight.
    pub fn park(&mut self) {
        if self.busy {
            self.busy = false;
            self.backend.end();
        }
    }

    /// A parked lease starts a transaction.
    pub fn resume(&mut self) {
        if !self.busy {
            self.busy = true;
            self.backend.begin();
            self.started = Instant::now();
        }
    }

    /// The connection is between transactions: back to the pool when it may be shared, else
    /// closed with QUIT.
    pub fn release(mut self) {
        let conn = self.conn.take().expect("held");
        if self.poolable() {
            self.backend.put_idle(conn, &self.config);
        } else {
            self.backend.retire(conn, &self.config);
        }
    }

    /// Closes the connection with QUIT (the session ended; the connection is not shared).
    pub fn quit(mut self) {
        let conn = self.conn.take().expect("held");
        self.backend.retire(conn, &self.config);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.busy {
            self.backend.end();
        }
    }
}
