use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::{Either, Mode};
use attitude_service::address::normalize_address;
use attitude_service::errors::retry_hint;
use attitude_service::{BoxError, Event, Request, answer};
use tower_service::Service;

use super::{Greylist, ResponseFuture, Verdict};

/// Greylists at RCPT TO; see the module docs.
pub struct GreylistService<S> {
    inner: S,
    greylist: Arc<Greylist>,
}

impl<S> std::fmt::Debug for GreylistService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreylistService").finish_non_exhaustive()
    }
}

impl<S> GreylistService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, greylist: Arc<Greylist>) -> Self {
        Self { inner, greylist }
    }
}

impl<S> Service<Request> for GreylistService<S>
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
        let Event::Command(Command::Rcpt(rcpt)) = &req.event else {
            return Either::inner(self.inner.call(req));
        };
        let session = &req.session;
        if session.auth.is_some() || session.marks.exempt().is_some() {
            return Either::inner(self.inner.call(req));
        }
        let Some(network) = self.greylist.network(session.client.ip()) else {
            return Either::inner(self.inner.call(req));
        };
        let sender = session
            .transaction
            .as_ref()
            .map_or(String::new(), |t| normalize_address(&t.mail.address));
        let recipient = normalize_address(&rcpt.address);
        let config = &self.greylist.config;
        match self.greylist.check(&network, &sender, &recipient) {
            Verdict::Pass | Verdict::Allowlisted => config.decisions.allow.increment(1),
            Verdict::Defer(wait) => {
                let enforce = config.mode == Mode::Enforce;
                config.decisions.refused(451, enforce);
                tracing::info!(session = session.id, client = %session.client, sender = %sender, rcpt = %recipient, dry_run = !enforce, "greylisted");
                if enforce {
                    return answer(Reply::new(
                        451,
                        EnhancedStatus::new(4, 7, 1),
                        format!("Greylisted; please try again in {}", retry_hint(Some(wait))),
                    ));
                }
            }
        }
        Either::inner(self.inner.call(req))
    }
}
