use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::{Either, Mode};
use tower_service::Service;

use super::{Decision, RelayControlConfig, ResponseFuture};
use attitude_service::{BoxError, Event, Request, answer};

/// Refuses RCPT that would relay; see the module docs.
#[derive(Debug, Clone)]
pub struct RelayControl<S> {
    inner: S,
    config: Arc<RelayControlConfig>,
}

impl<S> RelayControl<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: Arc<RelayControlConfig>) -> Self {
        Self { inner, config }
    }
}

impl<S> Service<Request> for RelayControl<S>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Event::Command(Command::Rcpt(rcpt)) = &req.event {
            let session = &req.session;
            let config = &self.config;
            let decision =
                config.decide(session.client.ip(), session.auth.is_some(), &rcpt.address);
            let what = match decision {
                Decision::Allow => None,
                Decision::Relay => Some("relay"),
                Decision::Routing => Some("routing in the local part"),
            };
            if let Some(what) = what {
                if config.mode == Mode::DryRun {
                    config.metrics.would_reject.increment(1);
                    tracing::info!(client = %session.client, rcpt = %rcpt.address, what, "relay would be refused (dry-run)");
                } else {
                    config.metrics.rejected.increment(1);
                    tracing::info!(client = %session.client, rcpt = %rcpt.address, what, "relay refused");
                    // Probing for an open relay is what spam engines do: the tarpit slows the
                    // rest.
                    session.marks.mark_suspicious("relay attempt");
                    return answer(Reply::new(
                        554,
                        EnhancedStatus::new(5, 7, 1),
                        match decision {
                            Decision::Routing => {
                                "Relay access denied: no routing (%, !, @) in the local part"
                            }
                            _ => "Relay access denied",
                        },
                    ));
                }
            } else {
                config.metrics.allowed.increment(1);
            }
        }
        Either::inner(self.inner.call(req))
    }
}
