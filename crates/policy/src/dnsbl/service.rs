use attitude_layers::Mode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_service::BoxFuture;
use attitude_service::driver::{SessionResult, SessionSummary};
use tokio::io::AsyncWriteExt;
use tower_service::Service;

use super::Dnsbl;
use crate::Accepted;

/// Scores the client, then refuses it or runs the session; see the module docs.
#[derive(Clone)]
pub struct DnsblService<S> {
    inner: S,
    dnsbl: Arc<Dnsbl>,
}

impl<S> std::fmt::Debug for DnsblService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblService").finish_non_exhaustive()
    }
}

impl<S> DnsblService<S> {
    pub(super) fn new(inner: S, dnsbl: Arc<Dnsbl>) -> Self {
        Self { inner, dnsbl }
    }
}

impl<S, C> Service<C> for DnsblService<S>
where
    C: Accepted + Send + 'static,
    S: Service<C, Response = SessionSummary> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = SessionSummary;
    type Error = S::Error;
    type Future = BoxFuture<Result<SessionSummary, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut conn: C) -> Self::Future {
        let mut inner = crate::take_readied(&mut self.inner);
        let dnsbl = self.dnsbl.clone();
        Box::pin(async move {
            let config = &dnsbl.config;
            let client = conn.client();
            let score = dnsbl.score(client).await;
            if score.total >= config.threshold {
                let listed = score.listed_by.join(", ");
                if config.mode == Mode::DryRun {
                    config.decisions.would_reject.increment(1);
                    tracing::info!(%client, score = score.total, %listed, "DNSBL would refuse (dry-run)");
                    return inner.call(conn).await;
                }
                config.decisions.reject.increment(1);
                tracing::info!(%client, score = score.total, %listed, "DNSBL refused");
                let reply = format!(
                    "554 5.7.1 Service unavailable; client [{client}] blocked using {listed}\r\n"
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.stream().write_all(reply.as_bytes()),
                )
                .await;
                config.sessions.record_refused();
                return Ok(SessionSummary::unstarted(
                    SessionResult::Refused,
                    reply.len() as u64,
                ));
            }
            config.decisions.allow.increment(1);
            // Marks change what the client meets (the tarpit slows a suspicious client,
            // greylisting skips an exempt one): a dry run sets none, it only says so.
            let mark = if score.total <= config.allowlist_threshold {
                Some("dnswl")
            } else if score.total > 0 {
                Some("dnsbl score")
            } else {
                None
            };
            match mark {
                Some(why) if config.mode == Mode::DryRun => {
                    tracing::info!(%client, score = score.total, mark = why, "DNSBL would mark the client (dry-run)");
                }
                Some("dnswl") => conn.marks().mark_exempt("dnswl"),
                Some(why) => conn.marks().mark_suspicious(why),
                None => {}
            }
            inner.call(conn).await
        })
    }
}
