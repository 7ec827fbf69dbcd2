use attitude_layers::Mode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_service::BoxFuture;
use attitude_service::driver::{SessionResult, SessionSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

use super::PregreetAction;
use super::layer::{Memory, Shared};
use crate::Accepted;

/// How long an early talker's first command may take to arrive.
const FIRST_COMMAND_WAIT: Duration = Duration::from_secs(10);

/// Runs the pregreet test, then the session; see the module docs.
#[derive(Clone)]
pub struct Pregreet<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Pregreet<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pregreet").finish_non_exhaustive()
    }
}

impl<S> Pregreet<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

enum Test {
    Waited,
    TalkedEarly,
    Gone,
}

impl<S, C> Service<C> for Pregreet<S>
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
        let client = attitude_service::address::canonical_ip(conn.client());
        let skip = self
            .shared
            .config
            .skip_networks
            .iter()
            .any(|n| n.contains(&client));
        if skip {
            return Box::pin(self.inner.call(conn));
        }
        let memory = self.shared.recall(client);
        if memory == Some(Memory::Passed) {
            self.shared.config.decisions.allow.increment(1);
            return Box::pin(self.inner.call(conn));
        }
        let mut inner = crate::take_readied(&mut self.inner);
        let shared = self.shared.clone();
        Box::pin(async move {
            let config = &shared.config;
            let memory = match memory {
                None => shared.recall_fleet(client).await,
                known => known,
            };
            if memory == Some(Memory::Passed) {
                config.decisions.allow.increment(1);
                return inner.call(conn).await;
            }
            if memory == Some(Memory::Failed) && config.mode == Mode::Enforce {
                config.decisions.reject.increment(1);
                let text =
                    "554 5.5.1 Protocol error: you talked before my greeting; try again later\r\n";
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.stream().write_all(text.as_bytes()),
                )
                .await;
                config.sessions.record_refused();
                return Ok(SessionSummary::unstarted(
                    SessionResult::Refused,
                    text.len() as u64,
                ));
            }
            let mut sent = 0;
            if config.multiline {
                let first = format!("220-{} ESMTP\r\n", config.hostname);
                sent += first.len() as u64;
                if conn.stream().write_all(first.as_bytes()).await.is_err() {
                    return Ok(SessionSummary::unstarted(SessionResult::IoError, 0));
                }
            }
            let mut byte = [0u8; 1];
            let pause = match &config.stress {
                Some((stress, under)) if stress.is_on() => config.pause.min(*under),
                _ => config.pause,
            };
            let test = match tokio::time::timeout(pause, conn.stream().peek(&mut byte)).await {
                Err(_elapsed) => Test::Waited,
                Ok(Ok(0) | Err(_)) => Test::Gone,
                Ok(Ok(_)) => Test::TalkedEarly,
            };
            match test {
                Test::Gone => Ok(SessionSummary::unstarted(SessionResult::ClientClosed, sent)),
                Test::Waited => {
                    shared.remember(client, Memory::Passed);
                    config.decisions.allow.increment(1);
                    inner.call(conn).await
                }
                Test::TalkedEarly if config.mode == Mode::DryRun => {
                    config.decisions.would_reject.increment(1);
                    tracing::info!(%client, "early talker (dry-run): served");
                    inner.call(conn).await
                }
                Test::TalkedEarly => {
                    shared.remember(client, Memory::Failed);
                    config.decisions.reject.increment(1);
                    tracing::info!(%client, action = ?config.action, "early talker refused");
                    if config.action == PregreetAction::Reject {
                        sent += refuse_first_command(conn.stream(), &config.hostname).await;
                    }
                    config.sessions.record_refused();
                    Ok(SessionSummary::unstarted(SessionResult::Refused, sent))
                }
            }
        })
    }
}

/// Greets the early talker, reads its first command and answers it `554 5.5.1`; octets sent.
async fn refuse_first_command(stream: &mut tokio::net::TcpStream, hostname: &str) -> u64 {
    let greeting = format!("220 {hostname} ESMTP\r\n");
    let refusal = "554 5.5.1 Protocol error: you talked before my greeting\r\n";
    let exchange = async {
        stream.write_all(greeting.as_bytes()).await?;
        // Up to the end of its first line (at most 512 octets, RFC 5321's command line).
        let mut line = Vec::with_capacity(64);
        let mut buf = [0u8; 512];
        while !line.contains(&b'\n') && line.len() < 512 {
            let n = stream.read(&mut buf[..512 - line.len()]).await?;
            if n == 0 {
                break;
            }
            line.extend_from_slice(&buf[..n]);
        }
        stream.write_all(refusal.as_bytes()).await
    };
    let _ = tokio::time::timeout(FIRST_COMMAND_WAIT, exchange).await;
    (greeting.len() + refusal.len()) as u64
}
