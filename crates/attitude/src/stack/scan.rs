//! `[clamav]` and `[rspamd]` as the command stack's innermost policy (after `[content]`, right
//! before the relay): built once per listener, its engines' clients shared by the sessions.

use std::sync::Arc;

use attitude_engines::clamav::Clamd;
use attitude_engines::rspamd::Rspamd;
use attitude_layers::Mode;
use attitude_policy::Decisions;
use attitude_policy::content::ByteBudget;
use attitude_policy::scan::{
    ClamavPolicy, Fallback, RspamdPolicy, ScanConfig, ScanLayer, ScanMetrics,
};

use crate::config::{Config, OnOversize};

/// The scan layer, when an engine is on for this listener; `budget` is shared with `[content]`.
pub(super) fn scan(config: &Config, budget: &Arc<ByteBudget>) -> Option<ScanLayer> {
    let (c, r) = (&config.clamav, &config.rspamd);
    if !c.enabled && !r.enabled {
        return None;
    }
    let clamav = c.enabled.then(|| ClamavPolicy {
        clamd: Clamd::new(c.addresses(), c.timeout),
        max_size: c.max_size,
        on_oversize: match c.on_oversize {
            OnOversize::Skip => Fallback::Accept,
            OnOversize::Tempfail => Fallback::Tempfail,
        },
        on_error: c.on_error,
        mode: c.mode,
        decisions: Decisions::register("clamav"),
    });
    let rspamd = r.enabled.then(|| RspamdPolicy {
        // Header changes are asked for only when they will be made.
        rspamd: Rspamd::new(&r.url, r.timeout, r.headers && r.mode == Mode::Enforce)
            .expect("validated with the configuration"),
        max_size: r.max_size,
        on_error: r.on_error,
        headers: r.headers,
        settings_id: r.settings_id.clone(),
        skip_authenticated: r.skip_authenticated,
        skip_trusted: r.skip_trusted,
        spam_headers: r.spam_headers(),
        mode: r.mode,
        decisions: Decisions::register("rspamd"),
    });
    Some(ScanLayer::new(ScanConfig {
        clamav,
        rspamd,
        budget: budget.clone(),
        on_over_budget: r.on_over_budget,
        trusted: config.relay.trusted_networks.clone(),
        metrics: ScanMetrics::register(),
    }))
}
