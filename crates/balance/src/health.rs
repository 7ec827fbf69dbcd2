//! SMTP health checks: connect, 220 greeting, EHLO, QUIT and its 221 (a check that just drops
//! the connection makes the backend log an error each time, cf. haproxy#1812).

use std::sync::Arc;

use attitude_codec::Command;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::conn::{BackendConn, BackendError};
use crate::identity::{IdentityMode, proxy_local_header};
use crate::pool::Inner;

/// Checks `backend` every interval until `stop`.
pub(crate) async fn run(pool: Arc<Inner>, backend: Arc<Backend>, stop: CancellationToken) {
    let config = pool.config.health.clone();
    loop {
        let result = timeout(config.timeout, check(&pool, &backend)).await;
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
            pool.changed.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

async fn check(pool: &Inner, backend: &Backend) -> Result<(), BackendError> {
    let limit = pool.config.health.timeout;
    // A backend that expects PROXY gets a LOCAL header: "this connection is the proxy's own".
    let preamble = (backend.identity() == IdentityMode::Proxy).then(proxy_local_header);
    let mut conn = BackendConn::open(
        backend.addr(),
        &pool.config.helo_name,
        limit,
        limit,
        preamble.as_deref(),
        pool.config.tls.as_ref(),
    )
    .await?;
    if let Some(hook) = &pool.on_caps {
        hook(&conn.caps());
    }
    let bye = conn.command(&Command::Quit, limit, "QUIT").await?;
    if bye.code() != 221 {
        return Err(BackendError::Refused(bye));
    }
    Ok(())
}
