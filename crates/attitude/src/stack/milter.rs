//! `[[milters]]` as the command stack's last policy (after the scanners, right before the
//! relay, so a signing milter signs the message as it goes to the backend): one layer per
//! listener, one milter connection per session. An envelope a milter changed passes relay
//! control and the rates again (`recheck`: the same layers, over a service that takes all).

use std::sync::Arc;

use attitude_engines::milter::{Milter, Timeouts};
use attitude_policy::Decisions;
use attitude_policy::content::ByteBudget;
use attitude_policy::milter::{MilterLayer, MilterMetrics, MilterPolicy, MiltersConfig};

use attitude_service::{BoxCommand, BoxError, Request, replies};

use crate::config::Config;

/// A session's policy layer (`stack::command`'s `CommandLayer`, named here so the two modules
/// do not import each other).
type Layer = Arc<dyn Fn(BoxCommand) -> BoxCommand + Send + Sync>;

/// The milter layer, when the listener has milters; `budget` is shared with `[content]` and
/// the scanners.
pub(super) fn milters(
    config: &Config,
    listener: &str,
    budget: &Arc<ByteBudget>,
    recheck: Vec<Layer>,
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
        recheck: Arc::new(move || {
            // The layers over a service that takes everything: only their refusals count.
            let mut inner = BoxCommand::new(tower::service_fn(|_req: Request| {
                std::future::ready(Ok::<_, BoxError>(replies::ok()))
            }));
            for layer in recheck.iter().rev() {
                inner = layer(inner);
            }
            inner
        }),
    }))
}
