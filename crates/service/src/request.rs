//! The vocabulary of the command stack.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use attitude_codec::{Command, CommandError, Extensions, MailFrom, Reply};
use bytes::Bytes;

/// HELO or EHLO as the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The name given.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub extended: bool,
}

/// The mail transaction in progress: MAIL accepted, recipients accepted so far.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The accepted MAIL command.
    pub mail: MailFrom,
    /// Recipients the backend accepted.
    pub rcpts: Vec<String>,
    /// When MAIL was accepted.
    pub started: Instant,
    /// Message octets received so far (DATA content, unstuffed, or BDAT chunks).
    pub data_bytes: u64,
    /// The message is coming in BDAT chunks (a DATA may not follow).
    pub bdat: bool,
}

/// Read-only view of a session, handed to every layer with each request.
#[derive(Debug, Clone)]
pub struct Session {
    /// Process-unique session id (for logs).
    pub id: u64,
    /// The client's address (the real one, once PROXY protocol is in).
    pub client: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// HELO/EHLO, once given.
    pub helo: Option<Helo>,
    /// The extensions the last EHLO reply offered (empty after HELO).
    pub offered: Extensions,
    /// The SIZE limit the last EHLO reply gave.
    pub size_limit: Option<std::num::NonZeroU64>,
    /// Authenticated identity, once authenticated.
    pub auth: Option<String>,
    /// TLS, once the session is encrypted (implicit TLS, or after STARTTLS).
    pub tls: Option<attitude_edge::TlsInfo>,
    /// Whether STARTTLS may be offered (a certificate is configured for this listener).
    pub starttls: bool,
    /// Transaction in progress (boxed: the session is held by every idle session, the
    /// transaction only between MAIL and its end).
    pub transaction: Option<Box<Transaction>>,
    /// Messages accepted in this session.
    pub messages: u32,
    /// Error replies sent in this session.
    pub errors: u32,
    /// When the session started.
    pub started: Instant,
    /// What policies have concluded about the client (shared by every view of this session).
    pub marks: Arc<Marks>,
}

/// What policies have concluded about a session's client, for other layers to act on (the
/// tarpit delays every reply to a client marked suspicious). Marks are set, never cleared.
#[derive(Debug, Default)]
pub struct Marks {
    suspicious: OnceLock<&'static str>,
    exempt: OnceLock<&'static str>,
}

impl Marks {
    /// Marks the client suspicious; the first reason given is kept.
    pub fn mark_suspicious(&self, reason: &'static str) {
        let _ = self.suspicious.set(reason);
    }

    /// Why the client was marked suspicious, if it was.
    pub fn suspicious(&self) -> Option<&'static str> {
        self.suspicious.get().copied()
    }

    /// Exempts the session from the checks that honour it (greylisting); the first reason
    /// given is kept.
    pub fn mark_exempt(&self, reason: &'static str) {
        let _ = self.exempt.set(reason);
    }

    /// Why the session is exempt from the other checks, if it is.
    pub fn exempt(&self) -> Option<&'static str> {
        self.exempt.get().copied()
    }
}

impl Session {
    /// A new session for a client connection.
    pub fn new(id: u64, client: SocketAddr, local: SocketAddr) -> Self {
        Self {
            id,
            client,
            local,
            helo: None,
            offered: Extensions::EMPTY,
            size_limit: None,
            auth: None,
            tls: None,
            starttls: false,
            transaction: None,
            messages: 0,
            errors: 0,
            started: Instant::now(),
            marks: Arc::default(),
        }
    }
}

/// How the DATA phase ended, as the session saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// `<CRLF>.<CRLF>` after valid content: the message may be committed.
    Complete,
    /// The message failed (bad content, a layer refused a chunk, backend lost): it must not be
    /// committed, and this is the reply for the client.
    Failed(Reply),
}

/// What happened in the session.
#[derive(Debug, Clone)]
pub enum Event {
    /// A valid command.
    Command(Command),
    /// A line that is not a valid command.
    Invalid(CommandError),
    /// An AUTH continuation line.
    AuthLine(Bytes),
    /// DATA content: whole CRLF lines, unstuffed. The reply is not written; an error reply fails
    /// the message (answered at end of data) and no more chunks of it are passed on.
    DataChunk(Bytes),
    /// End of data.
    DataEnd(DataOutcome),
    /// The session is ending (after QUIT, on disconnect, timeout or shutdown). The reply is not
    /// written. Lets the relay say QUIT to its backend.
    Close,
}

impl Event {
    /// A bounded label for metrics: the verb, or the frame kind.
    pub fn label(&self) -> &'static str {
        match self {
            Event::Command(cmd) => cmd.verb(),
            Event::Invalid(_) => "INVALID",
            Event::AuthLine(_) => "AUTH_LINE",
            Event::DataChunk(_) => "DATA_CHUNK",
            Event::DataEnd(_) => "DATA_END",
            Event::Close => "CLOSE",
        }
    }
}

/// One call of the command stack.
#[derive(Debug, Clone)]
pub struct Request {
    /// The session as it was when this event happened.
    pub session: Arc<Session>,
    /// The event.
    pub event: Event,
}
