use std::cell::LazyCell;
use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::{Either, Mode};
use attitude_service::{BoxError, Event, Request, Session, answer};
use tower_service::Service;

use super::matcher::normalize;
use super::{AccessAction, AccessConfig, AccessRule, Field, ResponseFuture};

/// Applies the access lists; see the module docs.
#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    config: Arc<AccessConfig>,
}

impl<S> Access<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: Arc<AccessConfig>) -> Self {
        Self { inner, config }
    }
}

/// The first rule that matches what is known at this command.
fn first_match<'a>(
    rules: &'a [AccessRule],
    session: &Session,
    sender: &str,
    recipient: Option<&str>,
) -> Option<&'a AccessRule> {
    // Each value is normalised once, when a rule first needs it.
    let helo = LazyCell::new(|| session.helo.as_ref().map(|h| normalize(&h.name)));
    let sender = LazyCell::new(|| normalize(sender));
    let recipient = LazyCell::new(|| recipient.map(normalize));
    rules.iter().find(|rule| match rule.field {
        Field::Client => rule.matcher.client(session.client.ip()),
        Field::Helo => helo.as_deref().is_some_and(|h| rule.matcher.normalized(h)),
        Field::Sender => rule.matcher.normalized(&sender),
        Field::Recipient => recipient
            .as_deref()
            .is_some_and(|r| rule.matcher.normalized(r)),
    })
}

impl<S> Service<Request> for Access<S>
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
        let session = &req.session;
        let rule = match &req.event {
            Event::Command(Command::Mail(mail)) => {
                first_match(&self.config.rules, session, &mail.address, None)
            }
            Event::Command(Command::Rcpt(rcpt)) => {
                let sender = session
                    .transaction
                    .as_ref()
                    .map_or("", |t| t.mail.address.as_str());
                // A client, HELO or sender rule that matches first here matched first at MAIL
                // FROM too, and was acted on there.
                first_match(&self.config.rules, session, sender, Some(&rcpt.address))
                    .filter(|rule| rule.field == Field::Recipient)
            }
            _ => None,
        };
        let Some(rule) = rule else {
            return Either::inner(self.inner.call(req));
        };
        let decisions = &self.config.decisions;
        match rule.action {
            AccessAction::Allow => decisions.allow.increment(1),
            AccessAction::Skip => {
                decisions.allow.increment(1);
                session.marks.mark_exempt("access list");
            }
            AccessAction::Deny => {
                let enforce = self.config.mode == Mode::Enforce;
                decisions.refused(554, enforce);
                tracing::info!(session = session.id, client = %session.client, rule = %rule.name, event = req.event.label(), dry_run = !enforce, "access denied");
                if enforce {
                    let text = rule.text.as_deref().unwrap_or("Access denied");
                    return answer(Reply::new(
                        554,
                        EnhancedStatus::new(5, 7, 1),
                        text.to_string(),
                    ));
                }
            }
        }
        Either::inner(self.inner.call(req))
    }
}
