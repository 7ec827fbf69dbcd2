//! The session driver: owns the client's socket, turns each decoded frame into one
//! `Service::call`, writes replies strictly in order, switches the codec's mode, and enforces
//! the session's timeouts, minimum data rate and error limit.
//!
//! Pipelining (RFC 2920): commands are handled one at a time in arrival order; replies are
//! buffered and flushed whenever the driver is about to wait for more input, so a pipelined
//! group gets its replies in order and in as few writes as possible.
//!
//! - this file: the settings and the run loop (read, decode, flush, deadlines, shutdown);
//! - `frames`: each decoded frame to the event for the command stack (and the STARTTLS
//!   injection guard);
//! - `update`: what the reply changes in the session, and the STARTTLS upgrade;
//! - `outcome`: how a session ended, its summary and metrics, the shutdown stages.

mod frames;
mod outcome;
mod stress;
mod update;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use attitude_codec::{CodecConfig, Frame, Mode, Reply, ServerCodec};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;
use tokio_util::codec::Decoder;
use tower::{Service, ServiceExt};

use attitude_edge::Stream;
use attitude_edge::tls::ServerTls;

use crate::BoxError;
use crate::auth::Exchange;
use crate::errors::error_reply;
use crate::replies;
use crate::request::{Event, Helo, Request, Session};

pub use outcome::{DriverMetrics, SessionResult, SessionSummary, Shutdown};
pub use stress::{Stress, StressLimits};

use stress::{Flip, Limits};

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
    /// Commands that move no transaction forward (NOOP, RSET, HELP, VRFY, EXPN, a repeated
    /// HELO/EHLO; not the EHLO after STARTTLS) after which the session is closed with
    /// `421 4.7.0` (Postfix's `smtpd_junk_command_limit`); 0 turns the limit off.
    pub junk_command_limit: u32,
    /// The certificate for STARTTLS (`None`: STARTTLS is not offered).
    pub tls: Option<Arc<ServerTls>>,
    /// Stress mode: the switch, and the limits while it is on (`None`: never).
    pub stress: Option<(Arc<Stress>, StressLimits)>,
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
            junk_command_limit: 100,
            tls: None,
            stress: None,
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
    /// BDAT: the size of the chunk being read.
    chunk: u64,
}

impl DataState {
    /// A message starting now (DATA's 354, or a transaction's first BDAT).
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_read: now,
            bytes: 0,
            failed: None,
            chunk: 0,
        }
    }
}

/// What the driver remembers of a request to update the session after the reply.
enum Pending {
    Helo(Helo),
    /// Boxed: what the driver holds across every call is part of every idle session.
    Mail(Box<attitude_codec::MailFrom>),
    Rcpt(String),
    Data,
    /// A BDAT command (its chunk follows).
    Bdat(u64),
    Chunk,
    DataEnd,
    Rset,
    Quit,
    StartTls,
    Auth,
    AuthLine,
    /// An AUTH exchange cancelled by attitude (a line it cannot take).
    AuthCancel,
    Other,
}

enum Step {
    Continue,
    Close(SessionResult),
    /// A reply the driver gives itself (a BDAT chunk's), without a call; boxed, as the other
    /// Step values are small.
    Answer(Box<Reply>),
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
    /// Boxed, as `auth`: an idle session has neither, and the driver is part of its future.
    data: Option<Box<DataState>>,
    /// The AUTH exchange in progress, for the login once the backend says 235.
    auth: Option<Box<Exchange>>,
    /// The reply to a refused BDAT command, given once its chunk is read.
    bdat_refused: Option<Box<Reply>>,
    /// Junk commands so far (see `DriverConfig::junk_command_limit`).
    junk: u32,
    /// When the wait for the current command began (its deadline is the limits' timeout on).
    waiting_since: Instant,
    /// Stress mode as this session sees it (`None`: no stress mode, or an exempt client).
    stress: Option<Arc<Stress>>,
    /// The read deadline, one timer for the session (moving it later is cheap; a new timer
    /// per read would wake the runtime's driver each time).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    bytes_in: u64,
    bytes_out: u64,
}

/// Runs one SMTP session on `io` until it ends, calling `service` once per frame.
///
/// Not an `async fn`, and the future is an `async` block over the driver rather than an `async fn`
/// taking it by value: either would hold the session's state twice (rustc keeps an `async fn`'s
/// arguments beside the locals they are moved into), and this future is what every idle session
/// costs.
pub fn drive<IO, S>(
    io: Stream<IO>,
    session: Session,
    service: S,
    config: Arc<DriverConfig>,
    shutdown: Shutdown,
    metrics: Arc<DriverMetrics>,
) -> impl Future<Output = SessionSummary>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    metrics.total.increment(1);
    metrics.active.increment(1.0);
    let mut driver = Driver {
        codec: ServerCodec::new(config.codec.clone()),
        waiting_since: Instant::now(),
        timer: Box::pin(tokio::time::sleep(config.command_timeout)),
        stress: config
            .stress
            .as_ref()
            .filter(|(_, limits)| !limits.exempts(session.client.ip()))
            .map(|(stress, _)| stress.clone()),
        io,
        service,
        config,
        metrics,
        session: Arc::new(session),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        data: None,
        auth: None,
        bdat_refused: None,
        junk: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    async move {
        let result = driver.run(&shutdown).await;
        driver.finish(result).await
    }
}

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    /// After the run loop: `Close` down the stack, the metrics and the log.
    async fn finish(&mut self, result: SessionResult) -> SessionSummary {
        // Let the stack release what it holds for this session (the relay QUITs its backend).
        let close = Request {
            session: self.session.clone(),
            event: Event::Close,
        };
        if let Ok(service) = self.service.ready().await {
            let _ = service.call(close).await;
        }
        self.metrics.active.decrement(1.0);
        self.metrics.record_end(result);
        let session = &self.session;
        let summary = SessionSummary {
            result,
            messages: session.messages,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            helo: session.helo.as_ref().map(|h| h.name.clone()),
            duration: session.started.elapsed(),
        };
        tracing::info!(
            target: "attitude::session",
            session = session.id,
            client = %session.client,
            helo = summary.helo.as_deref().unwrap_or("-"),
            tls = %session.tls.map_or("-", |t| t.version),
            cipher = %session.tls.map_or("-", |t| t.cipher),
            messages = summary.messages,
            bytes_in = summary.bytes_in,
            bytes_out = summary.bytes_out,
            result = result.as_str(),
            duration_ms = summary.duration.as_millis() as u64,
            "session end"
        );
        summary
    }

    async fn run(&mut self, shutdown: &Shutdown) -> SessionResult {
        if shutdown.drain.is_cancelled() {
            self.push(&replies::shutting_down());
            let _ = self.flush().await;
            return SessionResult::Shutdown;
        }
        self.push(&Reply::plain(
            220,
            format!("{} ESMTP attitude", self.config.hostname),
        ));
        loop {
            let frame = match self.next_frame(shutdown).await {
                Ok(frame) => frame,
                Err(end) => return end,
            };
            // Boxed: a command's state is held only while it is handled, not by every session
            // that waits for its next one (the run loop's future is).
            let handling = Box::pin(self.handle(frame));
            let step = handling.await;
            if let Step::Close(result) = step {
                let _ = self.flush().await;
                return result;
            }
        }
    }

    /// The next frame: decoded from what is buffered, or else the replies so far are flushed
    /// and more input is read within the current deadline; `Err` is how the session ends
    /// instead. The frame is returned whole (moved into its boxed handling), so the future a
    /// waiting session is made of keeps no room for one.
    async fn next_frame(&mut self, shutdown: &Shutdown) -> Result<Frame, SessionResult> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(_) => return Err(SessionResult::IoError),
            }
            if self.flush().await.is_err() {
                return Err(SessionResult::IoError);
            }
            let idle = self.codec.mode() == Mode::Command
                && self.session.transaction.is_none()
                && self.rbuf.is_empty();
            if idle && shutdown.drain.is_cancelled() {
                self.push(&replies::shutting_down());
                let _ = self.flush().await;
                return Err(SessionResult::Shutdown);
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                self.rbuf = BytesMut::new();
            }
            if idle {
                // A session waiting for its next command holds no write buffer: idle sessions
                // are what a flood is made of.
                self.wbuf = BytesMut::new();
            }
            let read = {
                // Woken at the switch's next flip (armed before the deadlines read it; an
                // authenticated session ignores the switch but is woken all the same).
                let mut flipped =
                    std::pin::pin!(Flip::new(self.stress.as_deref(), self.session.id));
                flipped.as_mut().arm();
                let (want, deadline) = match self.codec.mode() {
                    Mode::Data | Mode::Bdat => (DATA_READ, self.data_deadline()),
                    _ => (COMMAND_READ, self.command_deadline()),
                };
                self.rbuf.reserve(want);
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                tokio::select! {
                    biased;
                    // Between transactions a drain ends the session (a hard shutdown drains
                    // too); in one, only a hard shutdown does.
                    _ = if idle { shutdown.drain.cancelled() } else { shutdown.hard.cancelled() } => None,
                    read = self.io.read_buf(&mut self.rbuf) => Some(Ok(read)),
                    _ = self.timer.as_mut() => Some(Err(())),
                    // Stress began (or ended): the deadlines are computed again.
                    _ = flipped => continue,
                }
            };
            match read {
                None => {
                    self.push(&replies::shutting_down());
                    let _ = self.flush().await;
                    return Err(SessionResult::Shutdown);
                }
                Some(Err(_elapsed)) => {
                    self.push(&if matches!(self.codec.mode(), Mode::Data | Mode::Bdat) {
                        replies::data_timeout()
                    } else {
                        replies::command_timeout()
                    });
                    let _ = self.flush().await;
                    return Err(SessionResult::Timeout);
                }
                Some(Ok(Ok(0))) => {
                    // The client is gone: an unfinished message is never passed on as complete.
                    return Err(SessionResult::ClientClosed);
                }
                Some(Ok(Ok(n))) => {
                    self.bytes_in += n as u64;
                    self.metrics.bytes_in.increment(n as u64);
                    if let Some(data) = self.data.as_mut() {
                        data.bytes += n as u64;
                        data.last_read = Instant::now();
                    }
                }
                Some(Ok(Err(_))) => return Err(SessionResult::IoError),
            }
        }
    }

    /// True while stress mode is on for this session (not for an authenticated one).
    fn stressed(&self) -> bool {
        self.session.auth.is_none() && self.stress.as_ref().is_some_and(|s| s.is_on())
    }

    /// The limits this session has now: its configuration's, or under stress the stress ones.
    fn limits(&self) -> Limits {
        match (&self.config.stress, self.stressed()) {
            (Some((_, stress)), true) => Limits {
                command_timeout: stress.command_timeout.min(self.config.command_timeout),
                data_timeout: stress.data_timeout.min(self.config.data_timeout),
                min_data_rate: stress.min_data_rate.max(self.config.min_data_rate),
                max_errors: stress.max_errors.min(self.config.max_errors),
                junk_command_limit: match self.config.junk_command_limit {
                    0 => stress.junk_command_limit,
                    normal => stress.junk_command_limit.min(normal),
                },
            },
            _ => Limits {
                command_timeout: self.config.command_timeout,
                data_timeout: self.config.data_timeout,
                min_data_rate: self.config.min_data_rate,
                max_errors: self.config.max_errors,
                junk_command_limit: self.config.junk_command_limit,
            },
        }
    }

    fn command_deadline(&self) -> Instant {
        self.waiting_since + self.limits().command_timeout
    }

    fn data_deadline(&self) -> Instant {
        let Some(data) = &self.data else {
            return self.command_deadline();
        };
        let limits = self.limits();
        let idle = data.last_read + limits.data_timeout;
        if limits.min_data_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(data.bytes as f64 / limits.min_data_rate as f64);
        idle.min(data.started + limits.data_timeout + earned)
    }

    fn push(&mut self, reply: &Reply) {
        reply.encode(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.limits().data_timeout;
        let n = self.wbuf.len();
        match timeout_at(deadline, self.io.write_all(&self.wbuf)).await {
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

    /// One frame: its event through the command stack, then the session updated from the
    /// reply.
    async fn handle(&mut self, frame: Frame) -> Step {
        let (event, pending) = match self.event(frame) {
            Ok(pair) => pair,
            Err(Step::Answer(reply)) => return self.update(Pending::Other, *reply).await,
            Err(step) => return step,
        };
        let reply = self.call(event).await;
        self.update(pending, reply).await
    }
}
