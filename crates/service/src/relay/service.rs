use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_codec::{Body, Command, EnhancedStatus, MailFrom, Reply};
use metrics::Counter;
use tokio::sync::Mutex;
use tower_service::Service;

use super::backend::{BackendConn, BackendError};
use crate::auth::AuthOffer;
use crate::request::{DataOutcome, Event, Request};
use crate::{BoxError, BoxFuture};

/// Backends and time limits of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Backend mail servers, tried in turn.
    pub backends: Vec<SocketAddr>,
    /// Name attitude gives in its EHLO to backends.
    pub helo_name: String,
    /// TCP connect limit per backend.
    pub connect_timeout: Duration,
    /// Limit for the backend's greeting and EHLO reply.
    pub greeting_timeout: Duration,
    /// Limit for replies to MAIL, RCPT, DATA and RSET.
    pub command_timeout: Duration,
    /// Limit for writing one DATA chunk.
    pub data_block_timeout: Duration,
    /// Limit for the reply to end of data (RFC 5321 §4.5.3.2.6 says 10 minutes).
    pub data_end_timeout: Duration,
    /// Limit for the reply to QUIT (sent in the background).
    pub quit_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            helo_name: "localhost".into(),
            connect_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(120),
            data_block_timeout: Duration::from_secs(180),
            data_end_timeout: Duration::from_secs(600),
            quit_timeout: Duration::from_secs(5),
        }
    }
}

/// Metric handles of the relay.
#[derive(Debug)]
pub struct RelayMetrics {
    connect_errors: Vec<Counter>,
    connections: Counter,
    failures: Counter,
}

impl RelayMetrics {
    /// Registers the handles for these backends.
    pub fn register(backends: &[SocketAddr]) -> Self {
        Self {
            connect_errors: backends
                .iter()
                .map(|b| {
                    metrics::counter!("attitude_backend_connect_errors_total", "backend" => b.to_string())
                })
                .collect(),
            connections: metrics::counter!("attitude_backend_connections_total"),
            failures: metrics::counter!("attitude_backend_transaction_failures_total"),
        }
    }
}

/// State shared by every session's relay: configuration, round-robin position, metrics.
#[derive(Debug)]
pub struct RelayShared {
    config: RelayConfig,
    next: AtomicUsize,
    metrics: RelayMetrics,
    auth: Option<Arc<AuthOffer>>,
}

impl RelayShared {
    /// Shared relay state; each new backend session tells `auth` (if any) what it offers.
    pub fn new(
        config: RelayConfig,
        metrics: RelayMetrics,
        auth: Option<Arc<AuthOffer>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            next: AtomicUsize::new(0),
            metrics,
            auth,
        })
    }

    /// Opens and closes a backend session to learn what the backends offer (AUTH).
    pub async fn probe(&self) {
        if let Ok(conn) = self.connect().await {
            conn.quit(self.config.quit_timeout).await;
        }
    }

    /// Opens a backend session, trying each backend once, starting at the next in turn.
    async fn connect(&self) -> Result<BackendConn, Reply> {
        let n = self.config.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = self.config.backends[idx];
            match BackendConn::open(
                addr,
                &self.config.helo_name,
                self.config.connect_timeout,
                self.config.greeting_timeout,
            )
            .await
            {
                Ok(conn) => {
                    self.metrics.connections.increment(1);
                    if let Some(auth) = &self.auth {
                        auth.set_backend(conn.caps().auth_mechanisms());
                    }
                    return Ok(conn);
                }
                Err(error) => {
                    self.metrics.connect_errors[idx].increment(1);
                    tracing::warn!(backend = %addr, %error, "backend unavailable");
                }
            }
        }
        Err(Reply::new(
            451,
            EnhancedStatus::new(4, 4, 1),
            "No backend mail server available; try again later",
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// An AUTH exchange: the client's next line is an answer for the backend.
    Auth,
    Mail,
    Data {
        at_line_start: bool,
    },
    /// The backend was lost mid-transaction: every reply until the transaction ends is 4xx.
    Broken,
}

#[derive(Debug)]
struct RelayState {
    conn: Option<BackendConn>,
    phase: Phase,
}

/// The per-session relay service; see the module docs.
#[derive(Debug, Clone)]
pub struct Relay {
    shared: Arc<RelayShared>,
    state: Arc<Mutex<RelayState>>,
}

impl Relay {
    /// A relay for one session.
    pub fn new(shared: Arc<RelayShared>) -> Self {
        Self {
            shared,
            state: Arc::new(Mutex::new(RelayState {
                conn: None,
                phase: Phase::Idle,
            })),
        }
    }
}

fn ok() -> Reply {
    Reply::new(250, EnhancedStatus::new(2, 0, 0), "OK")
}

fn lost(during: &str) -> Reply {
    Reply::new(
        451,
        EnhancedStatus::new(4, 4, 2),
        format!("Connection to backend lost {during}; message not accepted, try again later"),
    )
}

/// A backend's 421 means "I am closing": for the client the session goes on, so it becomes a
/// 451 (same text) and the backend connection is dropped.
fn soften_421(reply: Reply) -> Reply {
    if reply.code() == 421 {
        Reply::from_parts(
            451,
            reply.status().or(Some(EnhancedStatus::new(4, 3, 2))),
            reply.lines().to_vec(),
        )
    } else {
        reply
    }
}

impl RelayState {
    fn fail(&mut self, shared: &RelayShared, error: &BackendError, during: &'static str) -> Reply {
        shared.metrics.failures.increment(1);
        if let Some(conn) = self.conn.take() {
            tracing::warn!(backend = %conn.addr(), %error, during, "backend failed");
        }
        self.phase = Phase::Broken;
        lost(during)
    }

    async fn reset(&mut self, shared: &RelayShared) {
        if self.phase != Phase::Idle
            && let Some(conn) = self.conn.as_mut()
        {
            // Mid-DATA or mid-AUTH the backend would read "RSET" as content or an answer.
            let in_data = matches!(self.phase, Phase::Data { .. } | Phase::Auth);
            let result = if in_data {
                Err(BackendError::Protocol("reset during DATA or AUTH"))
            } else {
                conn.command(&Command::Rset, shared.config.command_timeout, "RSET")
                    .await
            };
            if !matches!(result, Ok(ref r) if r.is_positive()) {
                self.conn = None;
            }
        }
        self.phase = Phase::Idle;
    }

    async fn mail(&mut self, shared: &RelayShared, mail: &MailFrom) -> Reply {
        // A connection kept from an earlier transaction may have been closed by the backend in
        // the meantime: one retry on a fresh connection.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                match shared.connect().await {
                    Ok(conn) => self.conn = Some(conn),
                    Err(reply) => return reply,
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            let caps = conn.caps();
            let relayed = MailFrom {
                address: mail.address.clone(),
                size: mail.size.filter(|_| caps.size),
                body: mail
                    .body
                    .filter(|b| *b == Body::SevenBit || caps.eight_bit_mime),
                smtputf8: mail.smtputf8 && caps.smtputf8,
            };
            match conn
                .command(
                    &Command::Mail(relayed),
                    shared.config.command_timeout,
                    "MAIL",
                )
                .await
            {
                Ok(reply) if reply.code() == 421 => {
                    self.conn = None;
                    if attempt == 0 {
                        continue;
                    }
                    return soften_421(reply);
                }
                Ok(reply) => {
                    if reply.is_positive() {
                        self.phase = Phase::Mail;
                    }
                    return reply;
                }
                Err(error) if reused && attempt == 0 => {
                    tracing::debug!(%error, "kept backend connection is gone; reconnecting");
                    self.conn = None;
                }
                Err(error) => return self.fail(shared, &error, "at MAIL"),
            }
        }
        lost("at MAIL")
    }

    /// AUTH, or an answer in the exchange: relayed, and the backend's reply handed back.
    async fn auth(&mut self, shared: &RelayShared, event: Event) -> Reply {
        if matches!(event, Event::Command(_)) {
            self.reset(shared).await;
            if self.conn.is_none() {
                match shared.connect().await {
                    Ok(conn) => self.conn = Some(conn),
                    Err(reply) => return reply,
                }
            }
        }
        let limit = shared.config.command_timeout;
        let conn = self
            .conn
            .as_mut()
            .expect("connected above or in the exchange");
        let result = match &event {
            Event::Command(cmd) => conn.command(cmd, limit, "AUTH").await,
            Event::AuthLine(line) => conn.line(line, limit).await,
            _ => unreachable!("only AUTH events"),
        };
        match result {
            Ok(reply) if reply.code() == 334 => {
                self.phase = Phase::Auth;
                reply
            }
            Ok(reply) => {
                self.phase = Phase::Idle;
                if reply.code() == 421 {
                    self.conn = None;
                    return Reply::new(
                        454,
                        EnhancedStatus::new(4, 7, 0),
                        "Temporary authentication failure; try again later",
                    );
                }
                reply
            }
            Err(error) => {
                self.fail(shared, &error, "during AUTH");
                self.phase = Phase::Idle;
                Reply::new(
                    454,
                    EnhancedStatus::new(4, 7, 0),
                    "Temporary authentication failure; try again later",
                )
            }
        }
    }

    async fn handle(&mut self, shared: &RelayShared, event: Event) -> Reply {
        let cfg = &shared.config;
        match (event, self.phase) {
            (event @ Event::Command(Command::Auth { .. }), _)
            | (event @ Event::AuthLine(_), Phase::Auth) => self.auth(shared, event).await,
            (Event::Command(Command::Ehlo(_) | Command::Helo(_) | Command::Rset), _) => {
                self.reset(shared).await;
                ok()
            }
            (Event::Command(Command::Mail(mail)), _) => {
                self.reset(shared).await;
                self.mail(shared, &mail).await
            }
            (Event::Command(Command::Rcpt(rcpt)), Phase::Mail) => {
                let conn = self.conn.as_mut().expect("connected in Mail phase");
                match conn
                    .command(&Command::Rcpt(rcpt), cfg.command_timeout, "RCPT")
                    .await
                {
                    Ok(reply) if reply.code() == 421 => {
                        self.conn = None;
                        self.phase = Phase::Broken;
                        soften_421(reply)
                    }
                    Ok(reply) => reply,
                    Err(error) => self.fail(shared, &error, "at RCPT"),
                }
            }
            (Event::Command(Command::Data), Phase::Mail) => {
                let conn = self.conn.as_mut().expect("connected in Mail phase");
                match conn
                    .command(&Command::Data, cfg.command_timeout, "DATA")
                    .await
                {
                    Ok(reply) if reply.code() == 354 => {
                        self.phase = Phase::Data {
                            at_line_start: true,
                        };
                        reply
                    }
                    Ok(reply) if reply.code() == 421 => {
                        self.conn = None;
                        self.phase = Phase::Broken;
                        soften_421(reply)
                    }
                    Ok(reply) => reply,
                    Err(error) => self.fail(shared, &error, "at DATA"),
                }
            }
            (Event::DataChunk(chunk), Phase::Data { mut at_line_start }) => {
                let conn = self.conn.as_mut().expect("connected in Data phase");
                match conn
                    .send_content(&chunk, &mut at_line_start, cfg.data_block_timeout)
                    .await
                {
                    Ok(()) => {
                        self.phase = Phase::Data { at_line_start };
                        ok()
                    }
                    Err(error) => self.fail(shared, &error, "during DATA"),
                }
            }
            (Event::DataEnd(DataOutcome::Complete), Phase::Data { at_line_start }) => {
                let conn = self.conn.as_mut().expect("connected in Data phase");
                match conn.finish_data(at_line_start, cfg.data_end_timeout).await {
                    Ok(reply) => {
                        self.phase = Phase::Idle;
                        conn.transactions += 1;
                        if reply.code() == 421 {
                            self.conn = None;
                        }
                        soften_421(reply)
                    }
                    Err(error) => {
                        let reply = self.fail(shared, &error, "at end of data");
                        self.phase = Phase::Idle;
                        reply
                    }
                }
            }
            (Event::DataEnd(DataOutcome::Failed(reply)), phase) => {
                if matches!(phase, Phase::Data { .. }) {
                    // Closing the connection before the final dot is the only way to abort
                    // DATA: the backend discards the partial message.
                    self.conn = None;
                }
                self.phase = Phase::Idle;
                reply
            }
            (Event::DataEnd(DataOutcome::Complete), Phase::Broken) => {
                self.phase = Phase::Idle;
                lost("during DATA")
            }
            (
                Event::Command(Command::Rcpt(_) | Command::Data) | Event::DataChunk(_),
                Phase::Broken,
            ) => lost("earlier in this transaction"),
            (Event::Command(Command::Quit) | Event::Close, phase) => {
                self.phase = Phase::Idle;
                let conn = self.conn.take();
                if matches!(phase, Phase::Data { .. } | Phase::Auth) {
                    // Mid-DATA: "QUIT" would be message text (mid-AUTH, an answer). Dropping the
                    // connection before the final dot makes the backend discard the message.
                    drop(conn);
                } else if let Some(conn) = conn {
                    let limit = cfg.quit_timeout;
                    tokio::spawn(conn.quit(limit));
                }
                Reply::new(221, EnhancedStatus::new(2, 0, 0), "Bye")
            }
            (event, phase) => {
                tracing::debug!(event = event.label(), ?phase, "relay: out of sequence");
                Reply::new(
                    503,
                    EnhancedStatus::new(5, 5, 1),
                    "Bad sequence of commands",
                )
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
        let shared = self.shared.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let mut state = state.lock_owned().await;
            Ok(state.handle(&shared, req.event).await)
        })
    }
}
