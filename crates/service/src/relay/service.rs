use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_balance::{BackendError, CheckoutError, ClientIdentity, FailureKind, Lease, Pool};
use attitude_codec::{Body, Command, EnhancedStatus, MailFrom, RcptTo, Reply};
use metrics::Counter;
use tokio::sync::Mutex;
use tower_service::Service;

use crate::request::{DataOutcome, Event, Request, Session};
use crate::{BoxError, BoxFuture};

/// Time limits of the relay's commands (connection limits live in the pool's config).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Limit for replies to MAIL, RCPT, DATA, RSET and AUTH.
    pub command_timeout: Duration,
    /// Limit for writing one DATA chunk.
    pub data_block_timeout: Duration,
    /// Limit for the reply to end of data (RFC 5321 §4.5.3.2.6 says 10 minutes).
    pub data_end_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(120),
            data_block_timeout: Duration::from_secs(180),
            data_end_timeout: Duration::from_secs(600),
        }
    }
}

/// Metric handles of the relay.
#[derive(Debug)]
pub struct RelayMetrics {
    failures: Counter,
    failovers: Counter,
    unavailable: Counter,
}

impl RelayMetrics {
    /// Registers the handles.
    pub fn register() -> Self {
        Self {
            failures: metrics::counter!("attitude_backend_transaction_failures_total"),
            failovers: metrics::counter!("attitude_relay_failovers_total"),
            unavailable: metrics::counter!("attitude_relay_no_backend_total"),
        }
    }
}

/// State shared by every session's relay: time limits, the backend pool, metrics.
#[derive(Debug)]
pub struct RelayShared {
    config: RelayConfig,
    pool: Pool,
    metrics: RelayMetrics,
}

impl RelayShared {
    /// Shared relay state over `pool`.
    pub fn new(config: RelayConfig, pool: Pool, metrics: RelayMetrics) -> Arc<Self> {
        Arc::new(Self {
            config,
            pool,
            metrics,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// An AUTH exchange: the client's next line is an answer for the backend.
    Auth,
    /// MAIL answered by attitude, a backend chosen, nothing sent to it yet.
    MailLocal,
    /// The backend refused MAIL for good: every RCPT gets that refusal.
    SenderRefused,
    /// A transaction open on the backend.
    Mail,
    /// DATA sent to the backend, its 354 not read yet (the client already has attitude's 354).
    DataPending,
    Data {
        at_line_start: bool,
    },
    /// The backend refused DATA: the content is read and dropped, and the refusal is the reply
    /// to end of data.
    Refused,
    /// The backend was lost mid-transaction: every reply until the transaction ends is 4xx.
    Broken,
}

/// The transaction so far, to replay on another backend if the first fails before DATA.
#[derive(Debug)]
struct Txn {
    mail: MailFrom,
    rcpts: Vec<RcptTo>,
    /// Backends that failed this transaction.
    tried: Vec<SocketAddr>,
}

#[derive(Debug)]
struct RelayState {
    /// The backend connection of the transaction in progress, or one the session keeps
    /// between transactions (pinned: authenticated, or PROXY identity).
    lease: Option<Lease>,
    phase: Phase,
    /// Boxed: most of a session's life is between transactions.
    txn: Option<Box<Txn>>,
    /// The session authenticated on its backend connection; if that connection is lost, the
    /// session cannot go on elsewhere.
    authenticated: bool,
    auth_lost: bool,
    /// The backend's reply to DATA, when it was not 354.
    refusal: Option<Reply>,
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
                lease: None,
                phase: Phase::Idle,
                txn: None,
                authenticated: false,
                auth_lost: false,
                refusal: None,
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

fn unavailable(error: &CheckoutError) -> Reply {
    match error {
        CheckoutError::Busy => Reply::new(
            451,
            EnhancedStatus::new(4, 4, 5),
            "Mail servers busy; try again later",
        ),
        _ => Reply::new(
            451,
            EnhancedStatus::new(4, 4, 1),
            "No backend mail server available; try again later",
        ),
    }
}

fn auth_lost() -> Reply {
    Reply::new(
        451,
        EnhancedStatus::new(4, 7, 0),
        "Authenticated backend session lost; reconnect and authenticate again",
    )
}

/// A lease from the pool, trying other backends while one cannot open a session, until `tried`
/// holds `1 + failover_attempts` of them. `Err` is the reply for the client.
async fn checkout(
    shared: &RelayShared,
    identity: &ClientIdentity,
    tried: &mut Vec<SocketAddr>,
) -> Result<Lease, Reply> {
    let attempts = 1 + shared.pool.config().failover_attempts as usize;
    loop {
        if tried.len() >= attempts {
            shared.metrics.unavailable.increment(1);
            return Err(unavailable(&CheckoutError::NoBackend));
        }
        match shared.pool.checkout(identity, tried).await {
            Ok(lease) => return Ok(lease),
            Err(CheckoutError::Backend { addr, error }) => {
                tracing::warn!(backend = %addr, %error, "backend unavailable; trying another");
                tried.push(addr);
                shared.metrics.failovers.increment(1);
            }
            Err(error) => {
                shared.metrics.unavailable.increment(1);
                return Err(unavailable(&error));
            }
        }
    }
}

fn temporary_auth_failure() -> Reply {
    Reply::new(
        454,
        EnhancedStatus::new(4, 7, 0),
        "Temporary authentication failure; try again later",
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

/// How [`RelayState::open`] ended on a backend.
enum Opened {
    /// The reply to the command at hand.
    Reply(Reply),
    /// The backend refused MAIL for good.
    SenderRefused(Reply),
}

/// What one step of a transaction on one backend came to.
enum Step {
    /// The backend answered (any reply the client should see).
    Reply(Reply),
    /// The backend failed: try another.
    Failed,
}

impl RelayState {
    /// Between transactions: a shareable connection goes back to the pool; a pinned one stays
    /// with the session, no longer counted in flight.
    fn put_back(&mut self, mut lease: Lease) {
        if lease.poolable() {
            lease.release();
        } else {
            lease.park();
            self.lease = Some(lease);
        }
    }

    fn fail(&mut self, shared: &RelayShared, error: &BackendError, during: &'static str) -> Reply {
        shared.metrics.failures.increment(1);
        if let Some(lease) = self.lease.take() {
            lease.failure(FailureKind::from(error));
            tracing::warn!(backend = %lease.addr(), %error, during, "backend failed");
        }
        if self.authenticated {
            self.auth_lost = true;
        }
        self.phase = Phase::Broken;
        lost(during)
    }

    /// Ends the transaction in progress (RSET), or aborts DATA/AUTH by dropping the connection.
    async fn reset(&mut self, shared: &RelayShared) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        self.txn = None;
        self.refusal = None;
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        match phase {
            // Nothing open on the backend.
            Phase::Idle | Phase::MailLocal | Phase::SenderRefused => self.put_back(lease),
            // Mid-DATA or mid-AUTH the backend would read "RSET" as content or an answer:
            // closing before the final dot is the only way to abort.
            Phase::Data { .. } | Phase::DataPending | Phase::Auth => {}
            Phase::Mail | Phase::Refused | Phase::Broken => {
                let result = lease
                    .conn()
                    .command(&Command::Rset, shared.config.command_timeout, "RSET")
                    .await;
                if matches!(result, Ok(ref r) if r.is_positive()) {
                    self.put_back(lease);
                }
            }
        }
    }

    /// Sends one command on `lease`; a failure (no reply, 421) is reported to the pool.
    async fn step(shared: &RelayShared, lease: &mut Lease, cmd: &Command) -> Step {
        let what = cmd.verb();
        match lease
            .conn()
            .command(cmd, shared.config.command_timeout, what)
            .await
        {
            Ok(reply) if reply.code() == 421 => {
                lease.failure(FailureKind::ServiceUnavailable);
                tracing::warn!(backend = %lease.addr(), %reply, "backend closing (421)");
                Step::Failed
            }
            Ok(reply) => Step::Reply(reply),
            Err(error) => {
                lease.failure(FailureKind::from(&error));
                tracing::warn!(backend = %lease.addr(), %error, during = what, "backend failed");
                Step::Failed
            }
        }
    }

    /// Opens the transaction on a backend: the one chosen at MAIL (or the session's pinned
    /// one), else one from the pool. MAIL, the recipients accepted so far (a replay) and `then`
    /// (the RCPT or DATA at hand) go in one write when the backend offers PIPELINING. A
    /// backend that fails before DATA (no connection, timeout, 421, 4xx to MAIL, a replayed
    /// recipient refused) is left for the next, up to `failover_attempts` of them; the client
    /// notices nothing.
    ///
    /// Returns the reply to `then` for the client, or `Opened::SenderRefused` with the
    /// backend's permanent refusal of MAIL (the client's MAIL was answered at once, so that is
    /// the answer to its recipients, as Postfix itself does with `smtpd_delay_reject`); `Err`
    /// when no backend could take the transaction.
    async fn open(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        then: &Command,
    ) -> Result<Opened, Reply> {
        let attempts = 1 + shared.pool.config().failover_attempts as usize;
        let mut stale_retry = true;
        let mut last_refusal: Option<Reply> = None;
        loop {
            let txn = self.txn.as_mut().expect("a transaction is open");
            if txn.tried.len() >= attempts {
                return Err(last_refusal
                    .map(soften_421)
                    .unwrap_or_else(|| unavailable(&CheckoutError::NoBackend)));
            }
            let mut lease = match self.lease.take() {
                Some(mut held) => {
                    held.resume();
                    held
                }
                None if self.authenticated => return Err(auth_lost()),
                None => match checkout(shared, identity, &mut txn.tried).await {
                    Ok(lease) => lease,
                    Err(reply) => return Err(last_refusal.map(soften_421).unwrap_or(reply)),
                },
            };
            let caps = lease.conn().caps();
            let relayed = MailFrom {
                address: txn.mail.address.clone(),
                size: txn.mail.size.filter(|_| caps.size),
                body: txn
                    .mail
                    .body
                    .filter(|b| *b == Body::SevenBit || caps.eight_bit_mime),
                smtputf8: txn.mail.smtputf8 && caps.smtputf8,
            };
            let mut cmds = Vec::with_capacity(txn.rcpts.len() + 2);
            cmds.push(Command::Mail(relayed));
            cmds.extend(txn.rcpts.iter().cloned().map(Command::Rcpt));
            cmds.push(then.clone());
            let reused = lease.reused();
            let replies = match lease
                .conn()
                .pipeline(&cmds, shared.config.command_timeout)
                .await
            {
                Ok(replies) => replies,
                Err(error) if reused && stale_retry => {
                    // A pooled connection the backend closed meanwhile: once, silently.
                    tracing::debug!(backend = %lease.addr(), %error, "pooled backend connection is gone; another");
                    stale_retry = false;
                    continue;
                }
                Err(error) => {
                    lease.failure(FailureKind::from(&error));
                    tracing::warn!(backend = %lease.addr(), %error, "backend failed at MAIL; trying another");
                    Self::failed_over(shared, txn, &lease);
                    continue;
                }
            };
            let (mail, rest) = replies.split_first().expect("one reply per command");
            let (then_reply, replayed) = rest.split_last().expect("one reply per command");
            if mail.code() == 421 || mail.is_transient() {
                lease.failure(if mail.code() == 421 {
                    FailureKind::ServiceUnavailable
                } else {
                    FailureKind::Transient
                });
                tracing::warn!(backend = %lease.addr(), reply = %mail, "backend refused MAIL for now; trying another");
                Self::failed_over(shared, txn, &lease);
                last_refusal = Some(mail.clone());
                continue;
            }
            if !mail.is_positive() {
                if !txn.rcpts.is_empty() {
                    // A replay the next backend refuses for good: it cannot take over.
                    Self::failed_over(shared, txn, &lease);
                    continue;
                }
                // The backend has no transaction open: the connection is clean.
                self.lease = Some(lease);
                return Ok(Opened::SenderRefused(mail.clone()));
            }
            if replayed.iter().any(|r| !r.is_positive()) {
                Self::failed_over(shared, txn, &lease);
                continue;
            }
            if then_reply.code() == 421 {
                lease.failure(FailureKind::ServiceUnavailable);
                Self::failed_over(shared, txn, &lease);
                last_refusal = Some(then_reply.clone());
                continue;
            }
            lease.success();
            self.lease = Some(lease);
            return Ok(Opened::Reply(then_reply.clone()));
        }
    }

    fn failed_over(shared: &RelayShared, txn: &mut Txn, lease: &Lease) {
        txn.tried.push(lease.addr());
        lease.failed_over();
        shared.metrics.failovers.increment(1);
    }

    /// MAIL: chooses the backend now (so a client hears "no backend" at once), answers 250
    /// and sends nothing yet: MAIL goes to the backend with the first RCPT, in one write.
    async fn mail(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        mail: MailFrom,
    ) -> Reply {
        if self.auth_lost {
            return auth_lost();
        }
        let mut tried = Vec::new();
        if self.lease.is_none() {
            match checkout(shared, identity, &mut tried).await {
                Ok(lease) => self.lease = Some(lease),
                Err(reply) => return reply,
            }
        }
        if let Some(lease) = self.lease.as_mut() {
            lease.resume();
        }
        self.txn = Some(Box::new(Txn {
            mail,
            rcpts: Vec::new(),
            tried,
        }));
        self.phase = Phase::MailLocal;
        Reply::new(250, EnhancedStatus::new(2, 1, 0), "Sender OK")
    }

    /// The first RCPT: MAIL and this RCPT go to the backend together.
    async fn first_rcpt(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        rcpt: RcptTo,
    ) -> Reply {
        match self
            .open(shared, identity, &Command::Rcpt(rcpt.clone()))
            .await
        {
            Ok(Opened::Reply(reply)) => {
                self.phase = Phase::Mail;
                if reply.is_positive()
                    && let Some(txn) = self.txn.as_mut()
                {
                    txn.rcpts.push(rcpt);
                }
                reply
            }
            Ok(Opened::SenderRefused(reply)) => {
                self.phase = Phase::SenderRefused;
                self.refusal = Some(reply.clone());
                reply
            }
            Err(reply) => {
                shared.metrics.failures.increment(1);
                self.phase = Phase::Broken;
                reply
            }
        }
    }

    /// RCPT or DATA within a transaction: on the current backend, or, if it fails, replayed
    /// on another.
    async fn in_transaction(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        cmd: Command,
    ) -> Reply {
        if matches!(cmd, Command::Data) {
            // The client gets 354 at once and starts sending while the backend's 354 is on its
            // way: one backend round trip less per message. The backend's answer is read before
            // the first content goes out; if it is not 354, the transaction fails over (nothing
            // was sent yet) or the refusal becomes the reply to end of data.
            let lease = self.lease.as_mut().expect("a lease in the Mail phase");
            if lease
                .conn()
                .send(&Command::Data, shared.config.command_timeout, "DATA")
                .await
                .is_ok()
            {
                self.phase = Phase::DataPending;
                return Reply::plain(354, "End data with <CR><LF>.<CR><LF>");
            }
        }
        let mut lease = self.lease.take().expect("a lease in the Mail phase");
        let reply = match Self::step(shared, &mut lease, &cmd).await {
            Step::Reply(reply) => {
                self.lease = Some(lease);
                reply
            }
            Step::Failed => {
                let txn = self.txn.as_mut().expect("a transaction in the Mail phase");
                Self::failed_over(shared, txn, &lease);
                drop(lease);
                if self.authenticated {
                    self.auth_lost = true;
                    self.phase = Phase::Broken;
                    return lost("earlier in this transaction");
                }
                match self.open(shared, identity, &cmd).await {
                    Ok(Opened::Reply(reply)) => reply,
                    Ok(Opened::SenderRefused(_)) | Err(_) => {
                        shared.metrics.failures.increment(1);
                        self.phase = Phase::Broken;
                        return lost(if matches!(cmd, Command::Data) {
                            "at DATA"
                        } else {
                            "at RCPT"
                        });
                    }
                }
            }
        };
        match cmd {
            Command::Rcpt(rcpt) if reply.is_positive() => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.rcpts.push(rcpt);
                }
            }
            Command::Data if reply.code() == 354 => {
                self.phase = Phase::Data {
                    at_line_start: true,
                };
            }
            _ => {}
        }
        reply
    }

    /// AUTH, or an answer in the exchange: relayed, and the backend's reply handed back. An
    /// authenticated backend connection is the session's own from then on.
    async fn auth(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        event: Event,
    ) -> Reply {
        if matches!(event, Event::Command(_)) {
            self.reset(shared).await;
            if self.lease.is_none() {
                match shared.pool.checkout(identity, &[]).await {
                    Ok(lease) => self.lease = Some(lease),
                    Err(error) => {
                        tracing::warn!(%error, "no backend for AUTH");
                        return temporary_auth_failure();
                    }
                }
            }
        }
        let limit = shared.config.command_timeout;
        let mut lease = self
            .lease
            .take()
            .expect("connected above or in the exchange");
        lease.resume();
        let result = match &event {
            Event::Command(cmd) => lease.conn().command(cmd, limit, "AUTH").await,
            Event::AuthLine(line) => lease.conn().raw(line, limit, "AUTH answer").await,
            _ => unreachable!("only AUTH events"),
        };
        match result {
            Ok(reply) if reply.code() == 334 => {
                self.phase = Phase::Auth;
                self.lease = Some(lease);
                reply
            }
            Ok(reply) if reply.code() == 421 => {
                self.phase = Phase::Idle;
                lease.failure(FailureKind::ServiceUnavailable);
                temporary_auth_failure()
            }
            Ok(reply) => {
                self.phase = Phase::Idle;
                if reply.code() == 235 {
                    lease.pin();
                    self.authenticated = true;
                }
                self.put_back(lease);
                reply
            }
            Err(error) => {
                self.lease = Some(lease);
                self.fail(shared, &error, "during AUTH");
                self.phase = Phase::Idle;
                temporary_auth_failure()
            }
        }
    }

    /// Reads the backend's answer to DATA (sent early, see `in_transaction`): 354 moves on to
    /// content; a failure fails over (no content was sent yet); any other reply refuses the
    /// message at end of data.
    async fn confirm_data(&mut self, shared: &RelayShared, identity: &ClientIdentity) {
        let mut lease = self.lease.take().expect("a lease in the DataPending phase");
        let answer = match lease
            .conn()
            .reply(shared.config.command_timeout, "DATA")
            .await
        {
            Ok(reply) if reply.code() == 421 => {
                lease.failure(FailureKind::ServiceUnavailable);
                None
            }
            Ok(reply) => Some(reply),
            Err(error) => {
                lease.failure(FailureKind::from(&error));
                tracing::warn!(backend = %lease.addr(), %error, during = "DATA", "backend failed");
                None
            }
        };
        let answer = match answer {
            Some(reply) => {
                self.lease = Some(lease);
                Ok(reply)
            }
            None if self.authenticated => {
                self.auth_lost = true;
                Err(())
            }
            None => {
                let txn = self
                    .txn
                    .as_mut()
                    .expect("a transaction in the DataPending phase");
                Self::failed_over(shared, txn, &lease);
                drop(lease);
                match self.open(shared, identity, &Command::Data).await {
                    Ok(Opened::Reply(reply)) => Ok(reply),
                    Ok(Opened::SenderRefused(_)) | Err(_) => Err(()),
                }
            }
        };
        match answer {
            Ok(reply) if reply.code() == 354 => {
                self.phase = Phase::Data {
                    at_line_start: true,
                }
            }
            Ok(reply) => {
                self.phase = Phase::Refused;
                self.refusal = Some(reply);
            }
            Err(()) => {
                shared.metrics.failures.increment(1);
                self.phase = Phase::Broken;
            }
        }
    }

    async fn handle(&mut self, shared: &RelayShared, session: &Session, event: Event) -> Reply {
        if self.phase == Phase::DataPending
            && matches!(
                event,
                Event::DataChunk(_) | Event::DataEnd(DataOutcome::Complete)
            )
        {
            self.confirm_data(shared, &identity(session)).await;
        }
        let cfg = &shared.config;
        match (event, self.phase) {
            (event @ Event::Command(Command::Auth { .. }), _)
            | (event @ Event::AuthLine(_), Phase::Auth) => {
                self.auth(shared, &identity(session), event).await
            }
            (Event::Command(Command::Ehlo(_) | Command::Helo(_) | Command::Rset), _) => {
                self.reset(shared).await;
                ok()
            }
            (Event::Command(Command::Mail(mail)), _) => {
                self.reset(shared).await;
                self.mail(shared, &identity(session), mail).await
            }
            (Event::Command(Command::Rcpt(rcpt)), Phase::MailLocal) => {
                self.first_rcpt(shared, &identity(session), rcpt).await
            }
            (Event::Command(Command::Rcpt(_)), Phase::SenderRefused) => self
                .refusal
                .clone()
                .expect("kept with the SenderRefused phase"),
            (Event::Command(cmd @ (Command::Rcpt(_) | Command::Data)), Phase::Mail) => {
                self.in_transaction(shared, &identity(session), cmd).await
            }
            (Event::DataChunk(chunk), Phase::Data { mut at_line_start }) => {
                let lease = self.lease.as_mut().expect("connected in Data phase");
                match lease
                    .conn()
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
                let mut lease = self.lease.take().expect("connected in Data phase");
                self.txn = None;
                self.phase = Phase::Idle;
                match lease
                    .conn()
                    .finish_data(at_line_start, cfg.data_end_timeout)
                    .await
                {
                    Ok(reply) if reply.code() == 421 => {
                        lease.failure(FailureKind::ServiceUnavailable);
                        soften_421(reply)
                    }
                    Ok(reply) => {
                        if reply.is_transient() {
                            lease.failure(FailureKind::Transient);
                        }
                        lease.transaction_done();
                        self.put_back(lease);
                        reply
                    }
                    Err(error) => {
                        self.lease = Some(lease);
                        let reply = self.fail(shared, &error, "at end of data");
                        self.phase = Phase::Idle;
                        reply
                    }
                }
            }
            (Event::DataChunk(_), Phase::Refused) => ok(),
            (Event::DataEnd(DataOutcome::Complete), Phase::Refused) => {
                let refusal = self.refusal.take().expect("kept with the Refused phase");
                self.reset(shared).await;
                refusal
            }
            (Event::DataEnd(DataOutcome::Failed(reply)), phase) => {
                if matches!(phase, Phase::Data { .. } | Phase::DataPending) {
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
                lost("during DATA")
            }
            (
                Event::Command(Command::Rcpt(_) | Command::Data) | Event::DataChunk(_),
                Phase::Broken,
            ) => lost("earlier in this transaction"),
            (Event::Command(Command::Quit) | Event::Close, _) => {
                // A shareable idle connection goes back to the pool (that is the point of the
                // pool); a pinned one is closed with QUIT; one mid-DATA is dropped.
                self.reset(shared).await;
                if let Some(lease) = self.lease.take() {
                    lease.quit();
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
            Ok(state.handle(&shared, &req.session, req.event).await)
        })
    }
}
