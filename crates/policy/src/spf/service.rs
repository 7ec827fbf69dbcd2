use attitude_layers::Mode;
use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::Either;
use attitude_service::address::{canonical_ip, normalize_address};
use attitude_service::{BoxError, BoxFuture, Event, Request};
use mail_auth::SpfResult;
use mail_auth::spf::verify::SpfParameters;
use tower_service::Service;

use super::layer::Shared;

/// Checks SPF at MAIL FROM; see the module docs.
pub struct Spf<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Spf<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spf").finish_non_exhaustive()
    }
}

impl<S> Spf<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S> Service<Request> for Spf<S>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<Result<Reply, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Event::Command(Command::Mail(mail)) = &req.event else {
            return Either::inner(self.inner.call(req));
        };
        let session = &req.session;
        let ip = canonical_ip(session.client.ip());
        let config = &self.shared.config;
        if session.auth.is_some()
            || session.marks.exempt().is_some()
            || config.trusted_networks.iter().any(|n| n.contains(&ip))
        {
            return Either::inner(self.inner.call(req));
        }
        // DNS knows A-labels: an internationalised sender domain is looked up as one.
        let sender = normalize_address(&mail.address);
        let helo = session
            .helo
            .as_ref()
            .map_or_else(String::new, |h| h.name.to_lowercase());
        let (id, client) = (session.id, session.client);
        let shared = self.shared.clone();
        let check = async move {
            let key = (ip, sender, helo);
            let result = match shared.cached(&key) {
                Some(result) => result,
                None => {
                    let (ip, sender, helo) = &key;
                    let config = &shared.config;
                    let params = if sender.is_empty() {
                        SpfParameters::verify_ehlo(*ip, helo, &config.hostname)
                    } else {
                        SpfParameters::verify_mail_from(*ip, helo, &config.hostname, sender)
                    };
                    let output = tokio::time::timeout(
                        config.timeout,
                        shared.authenticator.verify_spf(params),
                    )
                    .await;
                    let result = output.map_or(SpfResult::TempError, |o| o.result());
                    shared.remember(key.clone(), result);
                    result
                }
            };
            shared.count(result);
            (result, key.1, shared)
        };
        let relayed = self.inner.call(req);
        Either::rejected(Box::pin(async move {
            let ((result, sender, shared), reply) = futures::future::join(check, relayed).await;
            let reply = reply?;
            let config = &shared.config;
            if result != SpfResult::Fail || !reply.is_positive() {
                config.decisions.allow.increment(1);
                return Ok(reply);
            }
            let enforce = config.mode == Mode::Enforce;
            config.decisions.refused(550, enforce);
            tracing::info!(session = id, %client, sender = %sender, enforced = enforce, "SPF fail");
            if !enforce {
                return Ok(reply);
            }
            Ok(Reply::new(
                550,
                EnhancedStatus::new(5, 7, 23),
                format!(
                    "SPF validation failed: {client} is not allowed to send mail from <{sender}>",
                    client = client.ip()
                ),
            ))
        }))
    }
}
