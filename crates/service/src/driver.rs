//! The session driver: owns the client's socket, turns each decoded frame into one
//! `Service::call`, writes replies strictly in order, switches the codec's mode, and enforces
//! the session's timeouts, minimum data rate and error limit.
//!
//! Pipelining (RFC 2920): commands are handled one at a time in arrival order; replies are
//! buffered and flushed whenever the driver is about to wait for more input, so a pipelined
//! group gets its replies in order and in as few writes as possible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attitude_codec::{CodecConfig, Command, EnhancedStatus, Frame, Mode, Reply, ServerCodec};
use bytes::BytesMut;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use attitude_edge::tls::ServerTls;
use attitude_edge::{Stream, TlsInfo};

use crate::BoxError;
use crate::auth::Exchange;
use crate::errors::error_reply;
use crate::request::{DataOutcome, Event, Helo, Request, Session, Transaction};

/// Settings of the session driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Name in the greeting.
    pub hostname: String,
    /// Decoder limits and DATA policy.
    pub codec: CodecConfig,
    /// A complete command must arrive within this time after the previous reply (RFC 5321
    /// §4.5.3.2.7 suggests 5 minutes). Bytes that trickle in do not extend it.
    pub command_timeout: Duration,
    /// Longest silence inside DATA (RFC 5321 §4.5.3.2.8: 3 minutes for a data block).
    pub data_timeout: Duration,
    /// Minimum average DATA rate in octets per second after the first `data_timeout`
    /// (like Postfix's `smtpd_min_data_rate`); 0 turns the check off.
    pub min_data_rate: u64,
    /// Error replies after which the session is closed with 421.
    pub max_errors: u32,
    /// The certificate for STARTTLS (`None`: STARTTLS is not offered).
    pub tls: Option<Arc<ServerTls>>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            codec: CodecConfig::default(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
            max_errors: 20,
            tls: None,
        }
    }
}

/// Session-level metric handles.
#[derive(Debug)]
pub struct DriverMetrics {
    active: Gauge,
    total: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    ended: [Counter; 8],
    starttls_injection: Counter,
}

impl DriverMetrics {
    /// Registers the handles with the installed `metrics` recorder.
    pub fn register() -> Arc<Self> {
        Arc::new(Self {
            active: metrics::gauge!("attitude_sessions_active"),
            total: metrics::counter!("attitude_sessions_total"),
            bytes_in: metrics::counter!("attitude_client_bytes_received_total"),
            bytes_out: metrics::counter!("attitude_client_bytes_sent_total"),
            ended: SessionResult::ALL.map(
                |r| metrics::counter!("attitude_sessions_ended_total", "result" => r.as_str()),
            ),
            starttls_injection: metrics::counter!("attitude_starttls_injection_total"),
        })
    }

    /// Counts a session that is now encrypted, by what it negotiated.
    pub fn record_tls(&self, tls: &TlsInfo) {
        metrics::counter!("attitude_tls_sessions_total", "version" => tls.version, "cipher" => tls.cipher)
            .increment(1);
    }
}

impl DriverMetrics {
    /// Counts a session the connection stack refused before it began.
    pub fn record_refused(&self) {
        self.record_unstarted(SessionResult::Refused);
    }

    /// Counts a session that ended before its greeting (refused, or a failed implicit-TLS
    /// handshake).
    pub fn record_unstarted(&self, result: SessionResult) {
        self.total.increment(1);
        self.record_end(result);
    }

    fn record_end(&self, result: SessionResult) {
        // `ended` is built from `SessionResult::ALL`, which lists the variants in order.
        self.ended[result as usize].increment(1);
    }
}

/// The two stages of a shutdown: `drain` closes sessions that are between transactions,
/// `hard` closes every session (with 421 4.3.2).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop taking new transactions.
    pub drain: CancellationToken,
    /// Close now.
    pub hard: CancellationToken,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection without QUIT.
    ClientClosed,
    /// A timeout (command, DATA, minimum data rate, write).
    Timeout,
    /// Too many errors.
    TooManyErrors,
    /// attitude is shutting down.
    Shutdown,
    /// A socket error.
    IoError,
    /// Refused before the session began (connection stack).
    Refused,
    /// A layer answered 421 (e.g. the tarpit budget): the session is closed after it.
    Policy,
}

impl SessionResult {
    const ALL: [SessionResult; 8] = [
        SessionResult::Quit,
        SessionResult::ClientClosed,
        SessionResult::Timeout,
        SessionResult::TooManyErrors,
        SessionResult::Shutdown,
        SessionResult::IoError,
        SessionResult::Refused,
        SessionResult::Policy,
    ];

    /// A label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionResult::Quit => "quit",
            SessionResult::ClientClosed => "client_closed",
            SessionResult::Timeout => "timeout",
            SessionResult::TooManyErrors => "too_many_errors",
            SessionResult::Shutdown => "shutdown",
            SessionResult::IoError => "io_error",
            SessionResult::Refused => "refused",
            SessionResult::Policy => "policy",
        }
    }
}

/// What a finished session did.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// How it ended.
    pub result: SessionResult,
    /// Messages accepted by a backend.
    pub messages: u32,
    /// Octets read from the client.
    pub bytes_in: u64,
    /// Octets written to the client.
    pub bytes_out: u64,
    /// HELO/EHLO name.
    pub helo: Option<String>,
    /// Duration of the session.
    pub duration: Duration,
}

impl SessionSummary {
    /// A session that ended before it began: refused, or lost before the greeting.
    pub fn unstarted(result: SessionResult, bytes_out: u64) -> Self {
        Self {
            result,
            messages: 0,
            bytes_in: 0,
            bytes_out,
            helo: None,
            duration: Duration::ZERO,
        }
    }
}

/// Initial read buffer; it grows only while a long line or DATA needs it.
const COMMAND_READ: usize = 256;
const DATA_READ: usize = 16 * 1024;
/// Buffers above this size are released when empty.
const KEEP_BUFFER: usize = 4 * 1024;

struct DataState {
    started: Instant,
    last_read: Instant,
    bytes: u64,
    failed: Option<Reply>,
}

/// What the driver remembers of a request to update the session after the reply.
enum Pending {
    Helo(Helo),
    Mail(attitude_codec::MailFrom),
    Rcpt(String),
    Data,
    Chunk,
    DataEnd,
    Rset,
    Quit,
    StartTls,
    Auth,
    AuthLine,
    Other,
}

enum Step {
    Continue,
    Close(SessionResult),
}

struct Driver<IO, S> {
    io: Stream<IO>,
    service: S,
    config: Arc<DriverConfig>,
    metrics: Arc<DriverMetrics>,
    codec: ServerCodec,
    session: Arc<Session>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    data: Option<DataState>,
    /// The AUTH exchange in progress, for the login once the backend says 235.
    auth: Option<Exchange>,
    command_deadline: Instant,
    /// The read deadline, one timer for the session (moving it later is cheap; a new timer
    /// per read would wake the runtime's driver each time).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    bytes_in: u64,
    bytes_out: u64,
}

/// Runs one SMTP session on `io` until it ends, calling `service` once per frame.
pub async fn drive<IO, S>(
    io: Stream<IO>,
    session: Session,
    service: S,
    config: Arc<DriverConfig>,
    shutdown: Shutdown,
    metrics: Arc<DriverMetrics>,
) -> SessionSummary
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    metrics.total.increment(1);
    metrics.active.increment(1.0);
    let started = session.started;
    let mut driver = Driver {
        codec: ServerCodec::new(config.codec.clone()),
        command_deadline: Instant::now() + config.command_timeout,
        timer: Box::pin(tokio::time::sleep(config.command_timeout)),
        io,
        service,
        config,
        metrics: metrics.clone(),
        session: Arc::new(session),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        data: None,
        auth: None,
        bytes_in: 0,
        bytes_out: 0,
    };
    let result = driver.run(&shutdown).await;
    // Let the stack release what it holds for this session (the relay QUITs its backend).
    let close = Request {
        session: driver.session.clone(),
        event: Event::Close,
    };
    if let Ok(service) = driver.service.ready().await {
        let _ = service.call(close).await;
    }
    metrics.active.decrement(1.0);
    metrics.record_end(result);
    let summary = SessionSummary {
        result,
        messages: driver.session.messages,
        bytes_in: driver.bytes_in,
        bytes_out: driver.bytes_out,
        helo: driver.session.helo.as_ref().map(|h| h.name.clone()),
        duration: started.elapsed(),
    };
    tracing::info!(
        target: "attitude::session",
        session = driver.session.id,
        client = %driver.session.client,
        helo = summary.helo.as_deref().unwrap_or("-"),
        tls = %driver.session.tls.map_or("-", |t| t.version),
        cipher = %driver.session.tls.map_or("-", |t| t.cipher),
        messages = summary.messages,
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        result = result.as_str(),
        duration_ms = summary.duration.as_millis() as u64,
        "session end"
    );
    summary
}

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    async fn run(&mut self, shutdown: &Shutdown) -> SessionResult {
        if shutdown.drain.is_cancelled() {
            self.push(&shutting_down());
            let _ = self.flush().await;
            return SessionResult::Shutdown;
        }
        let greeting = Reply::plain(220, format!("{} ESMTP attitude", self.config.hostname));
        self.push(&greeting);
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    if let Step::Close(result) = self.handle(frame).await {
                        let _ = self.flush().await;
                        return result;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => return SessionResult::IoError,
            }
            if self.flush().await.is_err() {
                return SessionResult::IoError;
            }
            let idle = self.codec.mode() == Mode::Command
                && self.session.transaction.is_none()
                && self.rbuf.is_empty();
            if idle && shutdown.drain.is_cancelled() {
                self.push(&shutting_down());
                let _ = self.flush().await;
                return SessionResult::Shutdown;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                self.rbuf = BytesMut::new();
            }
            if idle {
                // A session waiting for its next command holds no write buffer: idle sessions
                // are what a flood is made of.
                self.wbuf = BytesMut::new();
            }
            let (want, deadline) = match self.codec.mode() {
                Mode::Data => (DATA_READ, self.data_deadline()),
                _ => (COMMAND_READ, self.command_deadline),
            };
            self.rbuf.reserve(want);
            let deadline = tokio::time::Instant::from_std(deadline);
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            let read = tokio::select! {
                biased;
                _ = shutdown.hard.cancelled() => None,
                _ = shutdown.drain.cancelled(), if idle => None,
                read = self.io.read_buf(&mut self.rbuf) => Some(Ok(read)),
                _ = self.timer.as_mut() => Some(Err(())),
            };
            match read {
                None => {
                    self.push(&shutting_down());
                    let _ = self.flush().await;
                    return SessionResult::Shutdown;
                }
                Some(Err(_elapsed)) => {
                    let text = if self.codec.mode() == Mode::Data {
                        "Timeout or data rate too low; closing connection"
                    } else {
                        "Timeout waiting for a command; closing connection"
                    };
                    self.push(&Reply::new(421, EnhancedStatus::new(4, 4, 2), text));
                    let _ = self.flush().await;
                    return SessionResult::Timeout;
                }
                Some(Ok(Ok(0))) => {
                    // The client is gone: an unfinished message is never passed on as complete.
                    return SessionResult::ClientClosed;
                }
                Some(Ok(Ok(n))) => {
                    self.bytes_in += n as u64;
                    self.metrics.bytes_in.increment(n as u64);
                    if let Some(data) = self.data.as_mut() {
                        data.bytes += n as u64;
                        data.last_read = Instant::now();
                    }
                }
                Some(Ok(Err(_))) => return SessionResult::IoError,
            }
        }
    }

    fn data_deadline(&self) -> Instant {
        let Some(data) = &self.data else {
            return self.command_deadline;
        };
        let idle = data.last_read + self.config.data_timeout;
        if self.config.min_data_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(data.bytes as f64 / self.config.min_data_rate as f64);
        idle.min(data.started + self.config.data_timeout + earned)
    }

    fn push(&mut self, reply: &Reply) {
        reply.encode(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.data_timeout;
        let n = self.wbuf.len();
        match timeout_at(deadline.into(), self.io.write_all(&self.wbuf)).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.io.flush().await?;
        self.bytes_out += n as u64;
        self.metrics.bytes_out.increment(n as u64);
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    async fn call(&mut self, event: Event) -> Reply {
        let req = Request {
            session: self.session.clone(),
            event,
        };
        let result = match self.service.ready().await {
            Ok(service) => service.call(req).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| error_reply(&e))
    }

    async fn handle(&mut self, frame: Frame) -> Step {
        let (event, pending) = match frame {
            Frame::Command(cmd) => {
                let pending = match &cmd {
                    Command::Helo(name) => Pending::Helo(Helo {
                        name: name.clone(),
                        extended: false,
                    }),
                    Command::Ehlo(name) => Pending::Helo(Helo {
                        name: name.clone(),
                        extended: true,
                    }),
                    Command::Mail(mail) => Pending::Mail(mail.clone()),
                    Command::Rcpt(rcpt) => Pending::Rcpt(rcpt.address.clone()),
                    Command::Data => Pending::Data,
                    Command::Rset => Pending::Rset,
                    Command::Quit => Pending::Quit,
                    Command::StartTls
                        if self.session.starttls
                            && self.session.tls.is_none()
                            && !self.rbuf.is_empty() =>
                    {
                        // Bytes after STARTTLS in the same read were sent in the clear and
                        // would run inside TLS (CVE-2011-0411): no upgrade, none of them run.
                        self.metrics.starttls_injection.increment(1);
                        self.rbuf.clear();
                        tracing::warn!(target: "attitude::session", session = self.session.id, client = %self.session.client, "commands pipelined after STARTTLS; closing");
                        self.push(&Reply::new(
                            554,
                            EnhancedStatus::new(5, 5, 1),
                            "Commands pipelined after STARTTLS; closing connection",
                        ));
                        return Step::Close(SessionResult::Policy);
                    }
                    Command::StartTls => Pending::StartTls,
                    Command::Auth { mechanism, initial } => {
                        self.auth = Some(Exchange::new(mechanism, initial.as_deref()));
                        Pending::Auth
                    }
                    _ => Pending::Other,
                };
                (Event::Command(cmd), pending)
            }
            Frame::Invalid(error) => (Event::Invalid(error), Pending::Other),
            Frame::AuthLine(line) => {
                if let Some(exchange) = self.auth.as_mut() {
                    exchange.answer(&line);
                }
                (Event::AuthLine(line), Pending::AuthLine)
            }
            Frame::DataChunk(chunk) => {
                if self.data.as_ref().is_some_and(|d| d.failed.is_some()) {
                    // The message already failed: the rest of it goes nowhere.
                    return Step::Continue;
                }
                if let Some(txn) = Arc::make_mut(&mut self.session).transaction.as_mut() {
                    txn.data_bytes += chunk.len() as u64;
                }
                (Event::DataChunk(chunk), Pending::Chunk)
            }
            Frame::DataEnd(result) => {
                let failed = self.data.take().and_then(|d| d.failed);
                let outcome = match (failed, result) {
                    (Some(reply), _) => DataOutcome::Failed(reply),
                    (None, Err(error)) => DataOutcome::Failed(error.reply()),
                    (None, Ok(())) => DataOutcome::Complete,
                };
                (Event::DataEnd(outcome), Pending::DataEnd)
            }
        };
        let reply = self.call(event).await;
        let quit = matches!(pending, Pending::Quit);
        let starttls = matches!(pending, Pending::StartTls);
        let session = Arc::make_mut(&mut self.session);
        match pending {
            Pending::Chunk => {
                if reply.is_error()
                    && let Some(data) = self.data.as_mut()
                {
                    data.failed = Some(reply);
                }
                return Step::Continue;
            }
            Pending::Helo(helo) if reply.is_positive() => {
                session.helo = Some(helo);
                session.transaction = None;
            }
            Pending::Mail(mail) if reply.is_positive() => {
                session.transaction = Some(Transaction {
                    mail,
                    rcpts: Vec::new(),
                    started: Instant::now(),
                    data_bytes: 0,
                });
            }
            Pending::Rcpt(rcpt) if reply.is_positive() => {
                if let Some(txn) = session.transaction.as_mut() {
                    txn.rcpts.push(rcpt);
                }
            }
            Pending::Data if reply.code() == 354 => {
                let now = Instant::now();
                self.data = Some(DataState {
                    started: now,
                    last_read: now,
                    bytes: 0,
                    failed: None,
                });
                self.codec.set_mode(Mode::Data);
            }
            Pending::DataEnd => {
                if reply.is_positive() {
                    session.messages += 1;
                }
                session.transaction = None;
            }
            Pending::Rset if reply.is_positive() => session.transaction = None,
            Pending::Auth | Pending::AuthLine => {
                if reply.code() == 334 {
                    self.codec.set_mode(Mode::Auth);
                } else {
                    self.codec.set_mode(Mode::Command);
                    let exchange = self.auth.take();
                    if reply.code() == 235 {
                        let login = exchange.and_then(|e| e.login());
                        session.auth = Some(login.unwrap_or_else(|| "(unknown)".into()));
                    }
                }
            }
            _ => {}
        }
        if self.codec.mode() == Mode::Command {
            self.command_deadline = Instant::now() + self.config.command_timeout;
        }
        self.push(&reply);
        if quit {
            return Step::Close(SessionResult::Quit);
        }
        if starttls && reply.code() == 220 {
            return self.start_tls().await;
        }
        if reply.code() == 421 {
            // 421 means "closing the transmission channel" (RFC 5321 §3.8).
            return Step::Close(SessionResult::Policy);
        }
        if reply.is_error() {
            let session = Arc::make_mut(&mut self.session);
            session.errors += 1;
            if session.errors >= self.config.max_errors {
                self.push(&Reply::new(
                    421,
                    EnhancedStatus::new(4, 7, 0),
                    "Too many errors; closing connection",
                ));
                return Step::Close(SessionResult::TooManyErrors);
            }
        }
        Step::Continue
    }
}

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    /// After `220 Ready to start TLS`: the handshake, then the session starts over (RFC 3207
    /// §4.2: the client must say EHLO again, and nothing learnt in the clear is kept).
    async fn start_tls(&mut self) -> Step {
        let Some(tls) = self.config.tls.clone() else {
            return Step::Close(SessionResult::Policy);
        };
        if self.flush().await.is_err() {
            return Step::Close(SessionResult::IoError);
        }
        let Some(plain) = self.io.take_plain() else {
            return Step::Close(SessionResult::IoError);
        };
        match tls.accept(plain).await {
            Ok(stream) => {
                let info = stream.tls_info();
                self.io = stream;
                let session = Arc::make_mut(&mut self.session);
                session.tls = info;
                session.helo = None;
                session.transaction = None;
                session.auth = None;
                if let Some(info) = &info {
                    self.metrics.record_tls(info);
                }
                self.command_deadline = Instant::now() + self.config.command_timeout;
                Step::Continue
            }
            Err(error) => {
                tracing::info!(target: "attitude::session", session = self.session.id, client = %self.session.client, %error, "TLS handshake failed");
                Step::Close(SessionResult::IoError)
            }
        }
    }
}

fn shutting_down() -> Reply {
    Reply::new(
        421,
        EnhancedStatus::new(4, 3, 2),
        "Service shutting down; try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::SessionResult;

    #[test]
    fn results_are_listed_in_declaration_order() {
        // The ended-session counters are indexed by `result as usize`.
        for (i, result) in SessionResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i, "{}", result.as_str());
        }
    }
}
