//! The connector: gives a transaction a connection to a chosen backend, an idle one of this
//! thread when it may serve this client, else a new one (within the backend's connection
//! limit), with the client's identity (XCLIENT or PROXY) on it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use crate::backend::{Backend, FailureKind, PooledConn};
use crate::config::PoolConfig;
use attitude_codec::Extensions;

use crate::conn::{BackendConn, BackendError, CapsHook};
use crate::identity::{ClientIdentity, IdentityMode};
use crate::lease::Lease;
use crate::registry::Registry;
use crate::transport::Dial;

/// Why no backend connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No backend is up (or every one was tried).
    #[error("no backend mail server available")]
    NoBackend,
    /// Every backend is at its connection limit, and none freed a slot in time.
    #[error("every backend is at its connection limit")]
    Busy,
    /// No usable backend offers what the transaction needs.
    #[error("no backend offers {0}")]
    Unsupported(Extensions),
    /// The chosen backend failed to open a session.
    #[error("backend {addr}: {error}")]
    Backend {
        /// The backend.
        addr: SocketAddr,
        /// What went wrong.
        error: BackendError,
    },
}

/// Opens and pools backend connections; see the module docs.
pub(crate) struct Connector {
    config: Arc<PoolConfig>,
    /// Failures count toward ejection.
    registry: Arc<Registry>,
    on_caps: Option<CapsHook>,
    dial: Arc<dyn Dial>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn new(
        config: Arc<PoolConfig>,
        registry: Arc<Registry>,
        on_caps: Option<CapsHook>,
        dial: Arc<dyn Dial>,
    ) -> Self {
        Self {
            config,
            registry,
            on_caps,
            dial,
        }
    }

    /// Takes an idle connection of this thread, or opens one (waiting for a slot under the
    /// backend's connection limit, unless `permit` holds one), and gives it the client's
    /// identity.
    pub(crate) async fn acquire(
        &self,
        backend: Arc<Backend>,
        identity: ClientIdentity,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Lease, CheckoutError> {
        let config = &self.config;
        let addr = backend.addr();
        if config.reuse && backend.shareable() {
            while let Some(mut pooled) = backend.take_idle(config) {
                if backend.identity() == IdentityMode::Xclient
                    && let Err(error) = pooled
                        .conn
                        .xclient(&identity, &config.helo_name, config.greeting_timeout)
                        .await
                {
                    if matches!(&error, BackendError::Refused(r) if r.is_permanent()) {
                        backend.set_xclient_once(config);
                        break;
                    }
                    tracing::debug!(backend = %addr, %error, "pooled connection refused XCLIENT; closing it");
                    continue;
                }
                backend.metrics.pool_hit.increment(1);
                return Ok(self.lease(backend, pooled, true));
            }
        }
        backend.metrics.pool_miss.increment(1);
        let permit = match (permit, &backend.slots) {
            (Some(p), _) => Some(p),
            (None, Some(slots)) => {
                if slots.available_permits() == 0 {
                    backend.evict_idle();
                }
                match timeout(config.queue_timeout, slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => return Err(CheckoutError::Busy),
                }
            }
            (None, None) => None,
        };
        match self.open(&backend, &identity).await {
            Ok(conn) => {
                let pooled = Box::new(PooledConn::new(conn, backend.clone(), permit));
                Ok(self.lease(backend, pooled, false))
            }
            Err(error) => {
                if let BackendError::Refused(reply) = &error
                    && backend.identity() == IdentityMode::Xclient
                    && reply.code() != 421
                {
                    tracing::error!(backend = %addr, %error, "XCLIENT refused: allow attitude's address in the backend's smtpd_authorized_xclient_hosts");
                }
                self.registry
                    .report_failure(&backend, FailureKind::from(&error));
                Err(CheckoutError::Backend { addr, error })
            }
        }
    }

    /// A new session with `backend`: PROXY header, greeting, EHLO, TLS, XCLIENT.
    async fn open(
        &self,
        backend: &Backend,
        identity: &ClientIdentity,
    ) -> Result<BackendConn, BackendError> {
        let config = &self.config;
        let addr = backend.addr();
        let preamble = (backend.identity() == IdentityMode::Proxy).then(|| identity.proxy_header());
        let mut conn = BackendConn::open(
            self.dial.as_ref(),
            addr,
            &config.helo_name,
            config.connect_timeout,
            config.greeting_timeout,
            preamble.as_deref(),
            config.tls.as_ref(),
        )
        .await?;
        if let Some(hook) = &self.on_caps {
            hook(&conn.caps());
        }
        if backend.identity() == IdentityMode::Xclient
            && !conn
                .xclient(identity, &config.helo_name, config.greeting_timeout)
                .await?
        {
            tracing::warn!(backend = %addr, "identity = \"xclient\" but the backend does not offer XCLIENT; it sees attitude's address");
        }
        if backend.identity() == IdentityMode::Xforward && conn.caps().xforward.is_none() {
            tracing::warn!(backend = %addr, "identity = \"xforward\" but the backend does not offer XFORWARD; it sees attitude's address");
        }
        backend.learn(conn.caps());
        Ok(conn)
    }

    fn lease(&self, backend: Arc<Backend>, pooled: Box<PooledConn>, reused: bool) -> Lease {
        Lease::new(
            self.config.clone(),
            self.registry.clone(),
            backend,
            pooled,
            reused,
        )
    }
}
