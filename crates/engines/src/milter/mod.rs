//! A milter client (the MTA's side of Sendmail's mail-filter protocol, version 6): one
//! connection per SMTP session, the stages the milter negotiated (a milter that skips a stage is
//! not sent it, one that does not answer a stage is not waited for), macros before each stage,
//! and the end-of-message replies (changes, then a verdict).
//!
//! Written here over tokio with tokio-util's length-delimited framing rather than taken from a
//! crate: `miltr-client` calls itself barebone and leaves the negotiation's meaning to its user,
//! and `rmilter` and `indymilter` are the milter's side. The protocol is small; what matters is
//! its state (which steps were negotiated), and that is this module.
//!
//! - `proto`: the packets (encoding commands, parsing replies; the parser is fuzzed).

pub mod proto;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::either::Either;

pub use proto::{Command, Modification, ProtocolError, Reply, Stage, Verdict};

/// Where a milter listens: `inet:host:port` (or `host:port`), or `unix:/path` (or `/path`), as
/// Postfix's `smtpd_milters` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    /// TCP, `host:port`.
    Inet(String),
    /// A unix socket.
    Unix(PathBuf),
}

impl FromStr for MilterAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let unix = s.strip_prefix("unix:").unwrap_or(s);
        if unix.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(unix)));
        }
        let inet = s.strip_prefix("inet:").unwrap_or(s);
        // Postfix also writes inet:port@host (Sendmail's form).
        let inet = match inet.split_once('@') {
            Some((port, host)) => format!("{host}:{port}"),
            None => inet.to_owned(),
        };
        match inet.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Inet(inet))
            }
            _ => Err(format!(
                "{s:?} is not a milter address: write inet:host:port (or host:port) or \
                 unix:/path/to/socket"
            )),
        }
    }
}

impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inet(a) => write!(f, "inet:{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a milter gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    /// The connection was not made.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// No answer within the stage's time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or closed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// It answered something that is not the protocol, or not at that point.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<ProtocolError> for MilterError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl MilterError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Io(_) => "io",
            Self::Protocol(_) => "protocol",
        }
    }
}

/// Time limits, as Postfix names them.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting and the negotiation (`milter_connect_timeout`, 30 s).
    pub connect: Duration,
    /// Each stage up to DATA, headers (`milter_command_timeout`, 30 s).
    pub command: Duration,
    /// Body pieces and end of message (`milter_content_timeout`, 300 s); progress replies
    /// start it again.
    pub content: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(30),
            content: Duration::from_secs(300),
        }
    }
}

/// One milter: where it is and its time limits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Milter {
    address: MilterAddress,
    timeouts: Timeouts,
}

/// The connection to a milter.
type Transport = Either<TcpStream, UnixStream>;

/// The end of a message: what the milter changes, and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfMessage {
    /// The changes, in the order the milter sent them.
    pub modifications: Vec<Modification>,
    /// Its verdict.
    pub verdict: Verdict,
}

impl Milter {
    /// A milter at `address`.
    pub fn new(address: MilterAddress, timeouts: Timeouts) -> Self {
        Self { address, timeouts }
    }

    /// Its address.
    pub fn address(&self) -> &MilterAddress {
        &self.address
    }

    /// Connects and negotiates: the milter may take `actions` (`proto::action`); attitude
    /// honours every step flag of `proto::step::ALL`.
    pub async fn open(&self, actions: u32) -> Result<Conn, MilterError> {
        let limit = self.timeouts.connect;
        let stream: Transport = match &self.address {
            MilterAddress::Inet(a) => {
                let stream = timeout(limit, TcpStream::connect(a))
                    .await
                    .map_err(|_| MilterError::Timeout(limit))?
                    .map_err(MilterError::Connect)?;
                // Request and answer, one small packet at a time: Nagle's delay with the
                // milter's delayed ACK would add 40 ms to a stage.
                stream.set_nodelay(true).map_err(MilterError::Connect)?;
                Either::Left(stream)
            }
            MilterAddress::Unix(p) => Either::Right(
                timeout(limit, UnixStream::connect(p))
                    .await
                    .map_err(|_| MilterError::Timeout(limit))?
                    .map_err(MilterError::Connect)?,
            ),
        };
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(proto::MAX_PACKET)
            .new_codec();
        let mut conn = Conn {
            framed: Framed::new(stream, codec),
            timeouts: self.timeouts,
            actions: 0,
            steps: 0,
        };
        conn.send(&Command::OptNeg {
            version: proto::VERSION,
            actions,
            steps: proto::step::ALL,
        })
        .await?;
        match conn.read(limit).await? {
            Reply::OptNeg {
                version,
                actions: wanted,
                steps,
            } => {
                if version < 2 {
                    return Err(MilterError::Protocol(format!("protocol version {version}")));
                }
                if steps & !proto::step::ALL != 0 {
                    return Err(MilterError::Protocol(format!(
                        "it needs protocol steps attitude does not offer ({:#x})",
                        steps & !proto::step::ALL
                    )));
                }
                conn.actions = wanted & actions;
                conn.steps = steps;
            }
            other => {
                return Err(MilterError::Protocol(format!(
                    "{other:?} instead of the negotiation"
                )));
            }
        }
        Ok(conn)
    }
}

/// A negotiated connection to one milter.
pub struct Conn {
    framed: Framed<Transport, LengthDelimitedCodec>,
    timeouts: Timeouts,
    /// The actions it may take.
    actions: u32,
    /// The steps it skips or leaves unanswered.
    steps: u32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("actions", &self.actions)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Whether the milter wants `stage` at all.
    pub fn wants(&self, stage: Stage) -> bool {
        self.steps & stage.skipped_by() == 0
    }

    /// The actions it negotiated.
    pub fn actions(&self) -> u32 {
        self.actions
    }

    async fn send(&mut self, command: &Command) -> Result<(), MilterError> {
        self.send_all(&[], command).await
    }

    /// Sends `macros` (if not empty) and `command` in one write.
    async fn send_all(&mut self, macros: &[Command], command: &Command) -> Result<(), MilterError> {
        let limit = self.timeouts.command;
        let framed = &mut self.framed;
        timeout(limit, async {
            for m in macros {
                framed.feed(m.encode()).await?;
            }
            framed.send(command.encode()).await
        })
        .await
        .map_err(|_| MilterError::Timeout(limit))??;
        Ok(())
    }

    /// `macros` for `stage` as the packets to send before its command (none when empty).
    fn macros(stage: Stage, pairs: Vec<(String, String)>) -> Vec<Command> {
        if pairs.is_empty() {
            Vec::new()
        } else {
            vec![Command::Macros { stage, pairs }]
        }
    }

    async fn read(&mut self, limit: Duration) -> Result<Reply, MilterError> {
        if let Either::Left(tcp) = self.framed.get_ref() {
            // A milter writes its changes and its verdict as separate packets; with Nagle on
            // its side, the verdict waits for the ACK of the change, which Linux would delay by
            // 40 ms. Acknowledge at once (the kernel clears this again by itself).
            let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        }
        match timeout(limit, self.framed.next()).await {
            Err(_) => Err(MilterError::Timeout(limit)),
            Ok(None) => Err(MilterError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(Some(Ok(packet))) => Ok(proto::parse(&packet)?),
        }
    }

    /// A verdict within `limit` (progress replies start it again).
    async fn verdict(&mut self, stage: Stage, limit: Duration) -> Result<Verdict, MilterError> {
        loop {
            match self.read(limit).await? {
                Reply::Verdict(v) => return Ok(v),
                Reply::Progress => continue,
                other => {
                    return Err(MilterError::Protocol(format!(
                        "{other:?} in answer to {}",
                        stage.label()
                    )));
                }
            }
        }
    }

    /// Sends `stage`'s macros and `command`; its verdict (`Continue` for a stage the milter
    /// skips or does not answer).
    pub async fn stage(
        &mut self,
        stage: Stage,
        macros: Vec<(String, String)>,
        command: Command,
    ) -> Result<Verdict, MilterError> {
        if !self.wants(stage) {
            return Ok(Verdict::Continue);
        }
        self.send_all(&Self::macros(stage, macros), &command)
            .await?;
        if self.steps & stage.unanswered_by() != 0 {
            return Ok(Verdict::Continue);
        }
        let limit = match stage {
            Stage::Body => self.timeouts.content,
            _ => self.timeouts.command,
        };
        self.verdict(stage, limit).await
    }

    /// The message to this milter: its headers (each `(name, value)`), the end of headers,
    /// the body in pieces, the end of message with `macros`; then its changes and verdict. A
    /// refusal before the end (a header or a piece refused) is the verdict, with no changes.
    pub async fn message(
        &mut self,
        headers: &[(String, String)],
        body: &[u8],
        macros: Vec<(String, String)>,
    ) -> Result<EndOfMessage, MilterError> {
        let early = |verdict| EndOfMessage {
            modifications: Vec::new(),
            verdict,
        };
        for (name, value) in headers {
            match self
                .stage(
                    Stage::Header,
                    Vec::new(),
                    Command::Header(name.clone(), value.clone()),
                )
                .await?
            {
                Verdict::Continue => {}
                verdict => return Ok(early(verdict)),
            }
        }
        match self.stage(Stage::Eoh, Vec::new(), Command::Eoh).await? {
            Verdict::Continue => {}
            verdict => return Ok(early(verdict)),
        }
        for piece in body.chunks(proto::BODY_CHUNK) {
            match self
                .stage(
                    Stage::Body,
                    Vec::new(),
                    Command::Body(Bytes::copy_from_slice(piece)),
                )
                .await?
            {
                Verdict::Continue => {}
                Verdict::Skip => break,
                verdict => return Ok(early(verdict)),
            }
        }
        self.send_all(&Self::macros(Stage::Eom, macros), &Command::Eom)
            .await?;
        let mut modifications = Vec::new();
        loop {
            match self.read(self.timeouts.content).await? {
                Reply::Progress => {}
                Reply::Modification(m) => {
                    if m.needs() & self.actions == 0 {
                        return Err(MilterError::Protocol(format!(
                            "{} was not negotiated",
                            m.label()
                        )));
                    }
                    modifications.push(m);
                }
                Reply::Verdict(Verdict::Skip) | Reply::OptNeg { .. } => {
                    return Err(MilterError::Protocol(
                        "an unexpected reply to end of message".into(),
                    ));
                }
                Reply::Verdict(verdict) => {
                    return Ok(EndOfMessage {
                        modifications,
                        verdict,
                    });
                }
            }
        }
    }

    /// The transaction ended (RSET, a new MAIL): the milter forgets it; the connection stays.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.send(&Command::Abort).await
    }

    /// The session ended.
    pub async fn quit(mut self) {
        let _ = self.send(&Command::Quit).await;
    }
}

/// The fuzz target's body (crates/engines/fuzz), also replayed over its corpus by a normal
/// test: `data` as a milter's byte stream, cut into packets by their 4-octet lengths (as the
/// codec does, within [`proto::MAX_PACKET`]), each parsed. Nothing may panic.
#[doc(hidden)]
pub mod fuzzing {
    use super::proto;

    /// Parses every packet of `data`.
    pub fn replies(data: &[u8]) {
        let mut rest = data;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > proto::MAX_PACKET || rest.len() < 4 + len {
                return;
            }
            let packet = &rest[4..4 + len];
            if let Ok(proto::Reply::Modification(m)) = proto::parse(packet) {
                let _ = (m.label(), m.needs());
            }
            rest = &rest[4 + len..];
        }
    }
}
