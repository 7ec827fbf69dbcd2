//! `[[milters]]` as the command stack's last policy (after the scanners, right before the
//! relay, so a signing milter signs the message as it goes to the backend): one layer per
//! listener, one milter connection per session.

use std::sync::Arc;

use attitude_engines::milter::{Milter, Timeouts};
use attitude_policy::Decisions;
use attitude_policy::content::ByteBudget;
use attitude_policy::milter::{MilterLayer, MilterMetrics, MilterPolicy, MiltersConfig};

use crate::config::Config;

/// The milter layer, when the listener has milters; `budget` is shared with `[content]` and
/// the scanners.
pub(super) fn milters(
    config: &Config,
    listener: &str,
    budget: &Arc<ByteBudget>,
) -> Option<MilterLayer> {
    if config.milters.is_empty() {
        return None;
    }
    let milters = config
        .milters
        .iter()
        .map(|m| MilterPolicy {
            name: m.name.clone(),
            milter: Milter::new(
                m.address().expect("validated"),
                Timeouts {
                    connect: m.connect_timeout,
                    command: m.command_timeout,
                    content: m.content_timeout,
                },
            ),
            default_action: m.default_action,
            metrics: MilterMetrics::register(&m.name),
        })
        .collect();
    let s = &config.milter;
    Some(MilterLayer::new(MiltersConfig {
        milters,
        mode: s.mode,
        discard: s.discard,
        envelope_code: s.envelope_code,
        hostname: config.hostname.clone(),
        daemon_name: listener.to_owned(),
        budget: budget.clone(),
        decisions: Decisions::register("milter"),
    }))
}
