//! The backend stack: the pool of backend mail servers (static list, DNS discovery, health
//! checks, outlier ejection, connection reuse) and the relay's shared state, the innermost
//! service of every session's command stack.
//!
//! ```text
//! Relay (per session) ─► Pool::checkout ─► this thread's p2c balancer ─► Backend ─► mail server
//! ```

use std::sync::Arc;

use attitude_balance::{BackendCaps, CapsHook, Pool};
use attitude_service::auth::{AuthOffer, MECHANISMS};
use attitude_service::relay::{RelayConfig, RelayMetrics, RelayShared};

use crate::config::Config;

/// What the backends offer for AUTH, learnt from every new backend connection; each listener's
/// offer is its own configuration's mechanisms within it.
pub(crate) fn auth_offer() -> Arc<AuthOffer> {
    Arc::new(AuthOffer::new(
        MECHANISMS.iter().map(|m| m.to_string()).collect(),
        true,
    ))
}

/// The pool from `[backend]` with its static servers (DNS discovery starts once the resolver
/// exists, see `Shared::new`). Every new connection tells `auth` what the backend offers.
pub(crate) fn pool(config: &Config, auth: &Arc<AuthOffer>) -> Result<Pool, String> {
    let on_caps: CapsHook = {
        let auth = auth.clone();
        Arc::new(move |caps: &BackendCaps| auth.set_backend(caps.auth_mechanisms()))
    };
    let pool = Pool::new(
        config.pool_config().map_err(|e| e.to_string())?,
        Some(on_caps),
    );
    pool.set_source("static", config.static_backends());
    Ok(pool)
}

/// The relay's shared state for one listener: its time limits from `[timeouts]`, over the
/// process's pool.
pub(crate) fn relay(config: &Config, pool: &Pool) -> Arc<RelayShared> {
    let t = &config.timeouts;
    let relay = RelayConfig {
        command_timeout: t.backend_command,
        data_block_timeout: t.backend_data,
        data_end_timeout: t.backend_data_end,
        received: config.smtp.received_header.then(|| config.hostname.clone()),
    };
    RelayShared::new(relay, pool.clone(), RelayMetrics::register())
}
