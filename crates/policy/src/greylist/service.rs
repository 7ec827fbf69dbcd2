use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::slot::{Slot, call_later};
use attitude_layers::{Either, Mode};
use attitude_service::address::normalize_address;
use attitude_service::errors::retry_hint;
use attitude_service::{BoxError, Event, Request, Session, answer};
use tower_service::Service;

use super::OnStoreError;
use super::{Exempt, Greylist, ResponseFuture, Verdict};

/// Greylists at RCPT TO; see the module docs.
pub struct GreylistService<S> {
    inner: Slot<S>,
    greylist: Arc<Greylist>,
    exempt: Option<Exempt>,
}

impl<S> std::fmt::Debug for GreylistService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreylistService").finish_non_exhaustive()
    }
}

impl<S> GreylistService<S> {
    /// Wraps `inner`; recipients for which `exempt` holds are not greylisted.
    pub fn new(inner: S, greylist: Arc<Greylist>, exempt: Option<Exempt>) -> Self {
        let later = greylist.config.fleet.is_some();
        Self {
            inner: Slot::new(inner, later),
            greylist,
            exempt,
        }
    }
}

/// The attempt: its triplet.
struct Attempt {
    network: String,
    sender: String,
    recipient: String,
}

/// Counts and logs `verdict`; the reply that defers the recipient, if it is deferred.
fn conclude(
    greylist: &Greylist,
    session: &Session,
    attempt: &Attempt,
    verdict: Verdict,
) -> Option<Reply> {
    let config = &greylist.config;
    match verdict {
        Verdict::Pass | Verdict::Allowlisted => {
            config.decisions.allow.increment(1);
            None
        }
        Verdict::Defer(wait) => {
            let enforce = config.mode == Mode::Enforce;
            config.decisions.refused(451, enforce);
            tracing::info!(session = session.id, client = %session.client, sender = %attempt.sender, rcpt = %attempt.recipient, dry_run = !enforce, "greylisted");
            enforce.then(|| {
                Reply::new(
                    451,
                    EnhancedStatus::new(4, 7, 1),
                    format!("Greylisted; please try again in {}", retry_hint(Some(wait))),
                )
            })
        }
    }
}

impl<S> Service<Request> for GreylistService<S>
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Event::Command(Command::Rcpt(rcpt)) = &req.event else {
            return Either::inner(Either::inner(self.inner.call(req)));
        };
        let session = &req.session;
        if session.auth.is_some()
            || session.marks.exempt().is_some()
            || self.exempt.as_ref().is_some_and(|exempt| exempt(rcpt))
        {
            return Either::inner(Either::inner(self.inner.call(req)));
        }
        let Some(network) = self.greylist.network(session.client.ip()) else {
            return Either::inner(Either::inner(self.inner.call(req)));
        };
        let attempt = Attempt {
            network,
            sender: session
                .transaction
                .as_ref()
                .map_or(String::new(), |t| normalize_address(&t.mail.address)),
            recipient: normalize_address(&rcpt.address),
        };
        let greylist = &self.greylist;
        let Some(ask) = greylist.ask_fleet(&attempt.network, &attempt.sender, &attempt.recipient)
        else {
            let verdict = greylist.check(&attempt.network, &attempt.sender, &attempt.recipient);
            return match conclude(greylist, session, &attempt, verdict) {
                Some(reply) => Either::inner(answer(reply)),
                None => Either::inner(Either::inner(self.inner.call(req))),
            };
        };
        let inner = self
            .inner
            .handle()
            .expect("a fleet greylist shares its inner service");
        let greylist = greylist.clone();
        Either::rejected(Box::pin(async move {
            let verdict = match ask.await {
                Ok(verdict) => verdict,
                Err(error) => {
                    greylist.config.store_errors.increment(1);
                    tracing::debug!(%error, "greylist: the shared store did not answer");
                    match greylist.config.on_error {
                        OnStoreError::Accept => Verdict::Pass,
                        OnStoreError::Local => {
                            greylist.check(&attempt.network, &attempt.sender, &attempt.recipient)
                        }
                    }
                }
            };
            match conclude(&greylist, &req.session, &attempt, verdict) {
                Some(reply) => Ok(reply),
                None => call_later(&inner, req).await,
            }
        }))
    }
}
