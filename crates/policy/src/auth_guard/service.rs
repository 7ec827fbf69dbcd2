use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::Either;
use attitude_layers::slot::{Slot, call_later};
use attitude_service::auth::Exchange;
use attitude_service::{BoxError, BoxFuture, Event, Request};
use tower_service::Service;

use super::layer::{After, Shared};

fn banned_reply() -> Reply {
    Reply::new(
        421,
        EnhancedStatus::new(4, 7, 0),
        "Too many failed authentications; try again later",
    )
}

/// Guards AUTH exchanges; see the module docs.
pub struct AuthGuard<S> {
    inner: Slot<S>,
    shared: Arc<Shared>,
    /// The exchange in progress.
    exchange: Option<Exchange>,
}

impl<S> std::fmt::Debug for AuthGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuard").finish_non_exhaustive()
    }
}

impl<S> AuthGuard<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        let later = shared.config.fleet.is_some();
        Self {
            inner: Slot::new(inner, later),
            shared,
            exchange: None,
        }
    }
}

impl<S> Service<Request> for AuthGuard<S>
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<Result<Reply, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &req.event {
            Event::Command(Command::Auth { mechanism, initial }) => {
                self.exchange = Some(Exchange::new(mechanism, initial.as_deref()));
            }
            Event::AuthLine(line) => {
                if let Some(exchange) = self.exchange.as_mut() {
                    exchange.answer(line);
                }
            }
            _ => return Either::inner(self.inner.call(req)),
        }
        let network = self.shared.network(req.session.client.ip());
        let login = self.exchange.as_ref().and_then(Exchange::login);
        if self.shared.banned(&network, login.as_deref()) {
            self.exchange = None;
            self.shared.config.decisions.reject.increment(1);
            return Either::rejected(Box::pin(std::future::ready(Ok(banned_reply()))));
        }
        let shared = self.shared.clone();
        // The exchange ends with this reply unless it is a 334 challenge; the login is known by
        // then (it is in the initial response or the first answer).
        let Some(ask) = shared.fleet_banned(&network, login.as_deref()) else {
            let reply = self.inner.call(req);
            return Either::rejected(Box::pin(after(shared, network, login, reply)));
        };
        // A ban another replica (or listener) made is in the fleet's store: one round trip per
        // AUTH line, none for any other command.
        let inner = self
            .inner
            .handle()
            .expect("a fleet guard shares its inner service");
        Either::rejected(Box::pin(async move {
            if ask.await {
                shared.config.decisions.reject.increment(1);
                return Ok(banned_reply());
            }
            let reply = call_later(&inner, req);
            after(shared, network, login, reply).await
        }))
    }
}

/// The exchange's reply, and what a failure leads to (counted, delayed, perhaps a ban).
async fn after<F>(
    shared: Arc<Shared>,
    network: String,
    login: Option<String>,
    reply: F,
) -> Result<Reply, BoxError>
where
    F: std::future::Future<Output = Result<Reply, BoxError>>,
{
    let reply = reply.await?;
    let config = &shared.config;
    match reply.code() {
        334 => Ok(reply),
        235 => {
            config.decisions.allow.increment(1);
            Ok(reply)
        }
        code if code >= 500 => {
            config.decisions.reject.increment(1);
            let after = shared.failed_anywhere(&network, login.as_deref()).await;
            tokio::time::sleep(config.failure_delay).await;
            Ok(match after {
                After::Counted => reply,
                After::Banned => banned_reply(),
            })
        }
        _ => Ok(reply),
    }
}
