//! The innermost service: relays each transaction to a backend mail server from the pool and
//! returns the backend's own replies.
//!
//! - takes a backend connection at MAIL, per transaction (p2c over the usable backends, an idle
//!   pooled connection when there is one), and gives it back after the transaction;
//! - if the backend fails before it accepted DATA (no connection, timeout, 421, 4xx to MAIL),
//!   the transaction so far (MAIL and the accepted RCPTs) is replayed on another backend; the
//!   client notices nothing;
//! - streams DATA chunk by chunk (re-dot-stuffed, canonical CRLF) and returns the backend's
//!   end-of-data reply: attitude never says 250 for a message itself; a BDAT message goes on
//!   as BDAT to a backend that offers CHUNKING, as DATA to one that does not;
//! - a backend lost after DATA began gives the client a 4xx, never a 250; a failed message
//!   closes the backend connection before the final dot, so the backend keeps nothing of it;
//! - an authenticated backend connection (AUTH relayed) and a PROXY-identified one belong to
//!   the session and are never pooled.
//!
//! - this file: the service, its shared state, and the dispatch of each event by phase;
//! - `state`: the phase, the transaction to replay, reset and failure;
//! - `open`: checkout with failover, MAIL and the first RCPT, replay on another backend;
//! - `auth`: the AUTH exchange;
//! - `data`: the backend's 354, content, end of data.

mod auth;
mod data;
mod open;
mod route;
mod state;
mod trace;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_balance::{ClientIdentity, Pool};
use attitude_codec::{Command, Reply};
use metrics::Counter;
use tokio::sync::Mutex;
use tower_service::Service;

pub use attitude_balance::{BackendCaps, BackendError};
pub use route::{Route, Router};

use crate::replies;
use crate::request::{DataOutcome, Event, Request, Session};
use crate::{BoxError, BoxFuture};
use state::{Phase, RelayState};

/// Time limits of the relay's commands (connection limits live in the pool's config).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Limit for replies to MAIL, RCPT, DATA, RSET and AUTH.
    pub command_timeout: Duration,
    /// Limit for writing one DATA chunk.
    pub data_block_timeout: Duration,
    /// Limit for the reply to end of data (RFC 5321 §4.5.3.2.6 says 10 minutes).
    pub data_end_timeout: Duration,
    /// attitude's hostname for the `Received:` header it adds to every message (`None`: no
    /// header).
    pub received: Option<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(120),
            data_block_timeout: Duration::from_secs(180),
            data_end_timeout: Duration::from_secs(600),
            received: None,
        }
    }
}

/// Metric handles of the relay.
#[derive(Debug)]
pub struct RelayMetrics {
    pub(crate) failures: Counter,
    pub(crate) failovers: Counter,
    pub(crate) unavailable: Counter,
    pub(crate) deferred: Counter,
    pub(crate) unrouted: Counter,
}

impl RelayMetrics {
    /// Registers the handles.
    pub fn register() -> Self {
        Self {
            failures: metrics::counter!("attitude_backend_transaction_failures_total"),
            failovers: metrics::counter!("attitude_relay_failovers_total"),
            unavailable: metrics::counter!("attitude_relay_no_backend_total"),
            deferred: metrics::counter!("attitude_relay_route_deferred_total"),
            unrouted: metrics::counter!("attitude_relay_unrouted_total"),
        }
    }
}

/// State shared by every session's relay: time limits, the backend pools and their routes,
/// metrics.
#[derive(Debug)]
pub struct RelayShared {
    pub(crate) config: RelayConfig,
    /// The pools this relay reaches; the first is the default pool (AUTH, unrouted mail).
    pub(crate) pools: Vec<Pool>,
    /// Which pool a recipient goes to (`None`: every recipient to the one pool, chosen at MAIL).
    pub(crate) router: Option<Arc<dyn Router>>,
    pub(crate) metrics: RelayMetrics,
}

impl RelayShared {
    /// Shared relay state over one pool.
    pub fn new(config: RelayConfig, pool: Pool, metrics: RelayMetrics) -> Arc<Self> {
        Self::routed(config, vec![pool], None, metrics)
    }

    /// Shared relay state over `pools` (the first is the default), `router` choosing each
    /// recipient's (see the `route` module).
    pub fn routed(
        config: RelayConfig,
        pools: Vec<Pool>,
        router: Option<Arc<dyn Router>>,
        metrics: RelayMetrics,
    ) -> Arc<Self> {
        assert!(!pools.is_empty(), "a relay needs a default pool");
        Arc::new(Self {
            config,
            pools,
            router,
            metrics,
        })
    }
}

/// The per-session relay service; see the module docs.
#[derive(Debug, Clone)]
pub struct Relay {
    shared: Arc<RelayShared>,
    /// Made at the first event that needs it (a session that only greets and waits has none).
    state: Option<Arc<Mutex<RelayState>>>,
}

impl Relay {
    /// A relay for one session.
    pub fn new(shared: Arc<RelayShared>) -> Self {
        Self {
            shared,
            state: None,
        }
    }
}

/// Who the client is, for XCLIENT or PROXY.
fn identity(session: &Session) -> ClientIdentity {
    ClientIdentity {
        addr: session.client,
        local: session.local,
        helo: session.helo.as_ref().map(|h| h.name.clone()),
        esmtp: session.helo.as_ref().is_some_and(|h| h.extended),
        login: session.auth.clone(),
    }
}

impl RelayState {
    async fn handle(&mut self, shared: &RelayShared, session: &Session, event: Event) -> Reply {
        if self.phase == Phase::DataPending
            && matches!(
                event,
                Event::DataChunk(_) | Event::DataEnd(DataOutcome::Complete)
            )
        {
            self.confirm_data(shared, &identity(session)).await;
        }
        if let (Event::Command(Command::Data | Command::Bdat { .. }), Phase::Mail) =
            (&event, self.phase)
            && let Some(hostname) = &shared.config.received
            && let Some(txn) = self.txn.as_mut()
        {
            txn.trace = Some(trace::received(
                hostname,
                session,
                txn.mail.smtputf8,
                &txn.ident,
            ));
        }
        if let Event::DataChunk(_) = &event
            && matches!(
                self.phase,
                Phase::Data { .. } | Phase::DataPending | Phase::Chunks
            )
            && let Some(refusal) = session
                .transaction
                .as_ref()
                .and_then(|t| self.over_route_limit(t.data_bytes))
        {
            return refusal;
        }
        match (event, self.phase) {
            (event @ Event::Command(Command::Auth { .. }), _)
            | (event @ Event::AuthLine(_), Phase::Auth) => {
                self.auth(shared, &identity(session), event).await
            }
            (Event::Command(Command::Ehlo(_) | Command::Helo(_) | Command::Rset), _) => {
                self.reset(shared).await;
                replies::ok()
            }
            (Event::Command(Command::Mail(mail)), _) => {
                self.reset(shared).await;
                self.mail(shared, &identity(session), mail, trace::message_id(session))
                    .await
            }
            (Event::Command(Command::Rcpt(rcpt)), Phase::MailLocal | Phase::Mail) => {
                self.rcpt(shared, &identity(session), rcpt).await
            }
            (Event::Command(Command::Rcpt(_) | Command::Bdat { .. }), Phase::SenderRefused) => self
                .refusal
                .clone()
                .expect("kept with the SenderRefused phase"),
            (Event::Command(Command::Data), Phase::Mail) => {
                self.in_transaction(shared, &identity(session), Command::Data)
                    .await
            }
            (Event::Command(Command::Bdat { .. }), Phase::Mail) => {
                self.first_chunk(shared, &identity(session)).await
            }
            (
                Event::Command(Command::Bdat { .. }),
                Phase::Data { .. } | Phase::DataPending | Phase::Chunks | Phase::Refused,
            ) => replies::ok(),
            (Event::DataChunk(chunk), Phase::Chunks) => self.send_chunk(shared, &chunk).await,
            (Event::DataEnd(DataOutcome::Complete), Phase::Chunks) => {
                self.end_of_chunks(shared).await
            }
            (Event::DataChunk(chunk), Phase::Data { at_line_start }) => {
                self.chunk(shared, &chunk, at_line_start).await
            }
            (Event::DataEnd(DataOutcome::Complete), Phase::Data { at_line_start }) => {
                self.end_of_data(shared, at_line_start).await
            }
            (Event::DataChunk(_), Phase::Refused) => replies::ok(),
            (Event::DataEnd(DataOutcome::Complete), Phase::Refused) => {
                let refusal = self.refusal.take().expect("kept with the Refused phase");
                self.reset(shared).await;
                refusal
            }
            (Event::DataEnd(DataOutcome::Failed(reply)), phase) => {
                if matches!(
                    phase,
                    Phase::Data { .. } | Phase::DataPending | Phase::Chunks
                ) {
                    // Closing the connection before the final dot is the only way to abort
                    // DATA: the backend discards the partial message.
                    self.lease = None;
                }
                // A backend that refused DATA is still in the transaction: RSET.
                self.reset(shared).await;
                reply
            }
            (Event::DataEnd(DataOutcome::Complete), Phase::Broken) => {
                self.txn = None;
                self.phase = Phase::Idle;
                replies::backend_lost("during DATA")
            }
            (
                Event::Command(Command::Rcpt(_) | Command::Data | Command::Bdat { .. })
                | Event::DataChunk(_),
                Phase::Broken,
            ) => replies::backend_lost("earlier in this transaction"),
            (Event::Command(Command::Quit) | Event::Close, _) => {
                // A shareable idle connection goes back to the pool (that is the point of the
                // pool); a pinned one is closed with QUIT; one mid-DATA is dropped.
                self.reset(shared).await;
                if let Some(lease) = self.lease.take() {
                    lease.quit();
                }
                replies::bye()
            }
            (event, phase) => {
                tracing::debug!(event = event.label(), ?phase, "relay: out of sequence");
                replies::bad_sequence()
            }
        }
    }
}

impl Service<Request> for Relay {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if self.state.is_none() {
            // Nothing to reset or to close yet: answered without a state.
            let answer = match &req.event {
                Event::Command(Command::Ehlo(_) | Command::Helo(_) | Command::Rset) => {
                    Some(replies::ok())
                }
                Event::Command(Command::Quit) | Event::Close => Some(replies::bye()),
                _ => None,
            };
            if let Some(reply) = answer {
                return Box::pin(std::future::ready(Ok(reply)));
            }
        }
        let shared = self.shared.clone();
        let state = self
            .state
            .get_or_insert_with(|| Arc::new(Mutex::new(RelayState::new())))
            .clone();
        Box::pin(async move {
            let mut state = state.lock_owned().await;
            let end = matches!(req.event, Event::DataEnd(DataOutcome::Complete));
            let reply = state.handle(&shared, &req.session, req.event).await;
            if end {
                // The Received header's id is `<session>.<n>`: the session line's `session`.
                // A line per message costs about 30 µs of CPU (a third of a small message's),
                // so it is a debug line.
                tracing::debug!(target: "attitude::session", session = req.session.id, id = %trace::message_id(&req.session), client = %req.session.client, reply = %reply, "message");
            }
            Ok(reply)
        })
    }
}
