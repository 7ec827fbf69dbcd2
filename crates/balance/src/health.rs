//! SMTP health checks: connect, 220 greeting, EHLO, QUIT and its 221 (a check that just drops
//! the connection makes the backend log an error each time, cf. haproxy#1812).

use std::sync::Arc;

use attitude_codec::Command;
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{BackendTls, HealthConfig};
use crate::conn::{BackendConn, BackendError, CapsHook};
use crate::identity::{IdentityMode, proxy_local_header};
use crate::transport::Dial;

/// What a health check needs: its settings, attitude's EHLO name, TLS, and who wants to hear
/// what the backend offers.
pub(crate) struct Checker {
    pub(crate) config: HealthConfig,
    pub(crate) helo_name: String,
    pub(crate) tls: Option<BackendTls>,
    pub(crate) on_caps: Option<CapsHook>,
    pub(crate) dial: Arc<dyn Dial>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Checks `backend` every interval until `stop`; `changed` hears of every up/down change.
pub(crate) async fn run(
    checker: Arc<Checker>,
    backend: Arc<Backend>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let config = &checker.config;
    loop {
        let result = timeout(config.timeout, checker.check(&backend)).await;
        let ok = match result {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(backend = %backend.addr(), %error, "health check failed");
                false
            }
            Err(_) => {
                tracing::debug!(backend = %backend.addr(), "health check timed out");
                false
            }
        };
        if backend.record_check(ok, config.rise, config.fall) {
            changed.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

impl Checker {
    async fn check(&self, backend: &Backend) -> Result<(), BackendError> {
        let limit = self.config.timeout;
        // A backend that expects PROXY gets a LOCAL header: "this connection is the proxy's own".
        let preamble = (backend.identity() == IdentityMode::Proxy).then(proxy_local_header);
        let mut conn = BackendConn::open(
            self.dial.as_ref(),
            backend.addr(),
            &self.helo_name,
            limit,
            limit,
            preamble.as_deref(),
            self.tls.as_ref(),
        )
        .await?;
        if let Some(hook) = &self.on_caps {
            hook(&conn.caps());
        }
        backend.learn(conn.caps());
        let bye = conn.command(&Command::Quit, limit, "QUIT").await?;
        if bye.code() != 221 {
            return Err(BackendError::Refused(bye));
        }
        Ok(())
    }
}
