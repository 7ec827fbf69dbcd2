//! The backend stack: the pools of backend mail servers (static list, DNS discovery, health
//! checks, outlier ejection, connection reuse; `pools.rs`), a listener's routes over them
//! (`routes.rs`) and the relay's shared state, the innermost service of every session's command
//! stack.
//!
//! ```text
//! Relay (per session) ─► Pool::checkout ─► this thread's p2c balancer ─► Backend ─► mail server
//! ```

use std::sync::Arc;

use attitude_balance::Pool;
use attitude_service::auth::{AuthOffer, MECHANISMS};
use attitude_service::relay::{RelayConfig, RelayMetrics, RelayShared, Router};

use super::pools::Pools;
use super::routes::RouteTable;
use crate::config::{Config, DEFAULT_POOL};

/// What the backends offer for AUTH, learnt from every new backend connection; each listener's
/// offer is its own configuration's mechanisms within it.
pub(crate) fn auth_offer() -> Arc<AuthOffer> {
    Arc::new(AuthOffer::new(
        MECHANISMS.iter().map(|m| m.to_string()).collect(),
        true,
    ))
}

/// The pools a listener's mail reaches, the default first: the default pool, then each pool
/// its routes name (in the order they are first named). With unrouted recipients refused the
/// default pool still serves AUTH and `<postmaster>`.
pub(crate) fn reachable(config: &Config, pools: &Pools) -> Result<Vec<Pool>, String> {
    pool_names(config)
        .into_iter()
        .map(|name| {
            pools
                .get(name)
                .ok_or_else(|| format!("[[routes]] pool {name:?} is not running"))
        })
        .collect()
}

/// The names of the pools of [`reachable`], in its order.
fn pool_names(config: &Config) -> Vec<&str> {
    let mut names = vec![DEFAULT_POOL];
    for route in &config.routes {
        if !names.contains(&route.pool.as_str()) {
            names.push(&route.pool);
        }
    }
    names
}

/// A listener's routes, when it has any (`None`: one pool for every recipient).
pub(crate) fn routes(config: &Config) -> Result<Option<Arc<RouteTable>>, String> {
    if !config.routed() {
        return Ok(None);
    }
    let names = pool_names(config);
    let routes = config.compiled_routes().map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(RouteTable::new(
        routes,
        config.routing.unrouted,
        |name| names.iter().position(|n| *n == name).unwrap_or(0),
    ))))
}

/// The relay's shared state for one listener: its time limits from `[timeouts]`, over the
/// pools it reaches and its routes.
pub(crate) fn relay(
    config: &Config,
    pools: Vec<Pool>,
    routes: Option<Arc<RouteTable>>,
) -> Arc<RelayShared> {
    let t = &config.timeouts;
    let relay = RelayConfig {
        command_timeout: t.backend_command,
        data_block_timeout: t.backend_data,
        data_end_timeout: t.backend_data_end,
        received: config.smtp.received_header.then(|| config.hostname.clone()),
    };
    RelayShared::routed(
        relay,
        pools,
        routes.map(|r| r as Arc<dyn Router>),
        RelayMetrics::register(),
    )
}
