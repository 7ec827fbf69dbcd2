//! One SMTP client connection to a backend.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use attitude_codec::{
    ClientCodec, ClientCodecError, Command, Extension, Reply, dot_stuff_into, is_wire_ready,
};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use attitude_edge::Stream;

use crate::config::BackendTls;
use crate::transport::{Dial, Transport};
use tokio::time::timeout;
use tokio_util::codec::Decoder;

use crate::caps::BackendCaps;
use crate::identity::{ClientIdentity, XclientAttrs};

/// DATA content is written to the backend once this much is gathered (and at end of data).
const DATA_BATCH: usize = 16 * 1024;

/// Why talking to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Backend address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No reply within the time limit.
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    /// The connection broke.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The backend closed the connection.
    #[error("backend closed the connection")]
    Closed,
    /// The TLS handshake failed (certificate not trusted, no common version...).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The backend sent something that is not an SMTP reply.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The backend refused the session (greeting or EHLO not 2xx).
    #[error("backend refused the session: {0}")]
    Refused(Reply),
}

impl From<ClientCodecError> for BackendError {
    fn from(e: ClientCodecError) -> Self {
        match e {
            ClientCodecError::Io(e) => BackendError::Io(e),
            ClientCodecError::Malformed(m) => BackendError::Protocol(m),
        }
    }
}

/// Called with what a backend offered, on every new connection and health check (AUTH offer).
pub type CapsHook = std::sync::Arc<dyn Fn(&BackendCaps) + Send + Sync>;

/// An open SMTP session with a backend: a plain SMTP client connection, with no pool
/// bookkeeping (the pool wraps it with that).
#[derive(Debug)]
pub struct BackendConn {
    stream: Stream<Box<dyn Transport>>,
    addr: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: ClientCodec,
    caps: BackendCaps,
    /// When the connection was opened.
    pub opened: Instant,
    /// The identity last given by XCLIENT or PROXY ([`ClientIdentity::key`]).
    pub identity: Option<u64>,
    /// XCLIENT as the first EHLO offered it (a backend may stop offering it once the
    /// identity changed, as Postfix does; the authorisation is the real peer's).
    xclient: Option<XclientAttrs>,
    /// The reply deadline (see `read_reply`).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// BDAT chunks sent whose replies are not read yet.
    bdat_pending: usize,
}

impl BackendConn {
    /// Connects, sends `preamble` (a PROXY header) if any, starts TLS if `tls` says so
    /// (implicit, or STARTTLS after EHLO), reads the greeting and says EHLO (HELO if EHLO is
    /// refused).
    pub async fn open(
        dial: &dyn Dial,
        addr: SocketAddr,
        helo_name: &str,
        connect_timeout: Duration,
        reply_timeout: Duration,
        preamble: Option<&[u8]>,
        tls: Option<&BackendTls>,
    ) -> Result<Self, BackendError> {
        let stream = timeout(connect_timeout, dial.dial(addr))
            .await
            .map_err(|_| BackendError::Timeout("connect"))?
            .map_err(|source| BackendError::Connect { addr, source })?;
        let mut conn = Self {
            stream: Stream::Plain(stream),
            addr,
            rbuf: BytesMut::with_capacity(512),
            wbuf: BytesMut::with_capacity(512),
            codec: ClientCodec::new(),
            caps: BackendCaps::default(),
            opened: Instant::now(),
            identity: None,
            xclient: None,
            timer: Box::pin(tokio::time::sleep(reply_timeout)),
            bdat_pending: 0,
        };
        if let Some(preamble) = preamble {
            conn.wbuf.extend_from_slice(preamble);
            conn.flush(reply_timeout, "PROXY header").await?;
        }
        if let Some(tls) = tls.filter(|t| t.implicit) {
            conn.handshake(tls, reply_timeout).await?;
        }
        let greeting = conn.read_reply(reply_timeout, "greeting").await?;
        if greeting.code() != 220 {
            return Err(BackendError::Refused(greeting));
        }
        conn.hello(helo_name, reply_timeout).await?;
        if let Some(tls) = tls.filter(|t| !t.implicit) {
            if !conn.caps.offers(Extension::StartTls) {
                return Err(BackendError::Protocol(
                    "[backend.tls] mode = starttls but the backend does not offer STARTTLS",
                ));
            }
            let reply = conn
                .command(&Command::StartTls, reply_timeout, "STARTTLS")
                .await?;
            if reply.code() != 220 {
                return Err(BackendError::Refused(reply));
            }
            conn.handshake(tls, reply_timeout).await?;
            conn.hello(helo_name, reply_timeout).await?;
        }
        conn.xclient = conn.caps.xclient;
        Ok(conn)
    }

    /// The TLS handshake as the client (nothing unread may be left in the clear).
    async fn handshake(&mut self, tls: &BackendTls, limit: Duration) -> Result<(), BackendError> {
        if !self.rbuf.is_empty() {
            return Err(BackendError::Protocol("data after the STARTTLS reply"));
        }
        let plain = self.stream.take_plain().ok_or(BackendError::Closed)?;
        self.stream = timeout(limit, tls.client.connect(plain, self.addr.ip()))
            .await
            .map_err(|_| BackendError::Timeout("TLS handshake"))?
            .map_err(BackendError::Tls)?;
        Ok(())
    }

    /// EHLO (HELO if EHLO is refused); learns the backend's capabilities.
    async fn hello(&mut self, helo_name: &str, limit: Duration) -> Result<(), BackendError> {
        let ehlo = self
            .command(&Command::Ehlo(helo_name.to_owned()), limit, "EHLO")
            .await?;
        if ehlo.is_positive() {
            self.caps = BackendCaps::from_ehlo(&ehlo);
        } else {
            let helo = self
                .command(&Command::Helo(helo_name.to_owned()), limit, "HELO")
                .await?;
            if !helo.is_positive() {
                return Err(BackendError::Refused(helo));
            }
            self.caps = BackendCaps::default();
        }
        Ok(())
    }

    /// Tells the backend who the client is with XCLIENT, unless this connection already
    /// carries that identity. The backend answers with a new greeting, so EHLO follows. A
    /// backend that does not offer XCLIENT is left alone (`Ok(false)`); a connection that
    /// carries another client's identity and cannot change it is an error (never reused for
    /// someone else).
    pub async fn xclient(
        &mut self,
        identity: &ClientIdentity,
        helo_name: &str,
        limit: Duration,
    ) -> Result<bool, BackendError> {
        let key = identity.key();
        if self.identity == Some(key) {
            return Ok(true);
        }
        let Some(attrs) = self.xclient else {
            if self.identity.is_some() {
                return Err(BackendError::Protocol("cannot change the XCLIENT identity"));
            }
            return Ok(false);
        };
        let line = identity.xclient_line(attrs);
        let reply = self.raw(line.as_bytes(), limit, "XCLIENT").await?;
        if reply.code() != 220 {
            return Err(BackendError::Refused(reply));
        }
        self.hello(helo_name, limit).await?;
        self.identity = Some(key);
        Ok(true)
    }

    /// Still open as far as the socket knows: not closed by the backend, and nothing
    /// unsolicited (such as a 421 before an idle timeout close) waiting to be read.
    pub fn is_open(&self) -> bool {
        let Some(socket) = self.stream.get_ref() else {
            return false;
        };
        self.rbuf.is_empty() && socket.quiet()
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the backend offered.
    pub fn caps(&self) -> BackendCaps {
        self.caps
    }

    /// Sends one command without waiting for its reply (read it with [`BackendConn::reply`]).
    pub async fn send(
        &mut self,
        cmd: &Command,
        limit: Duration,
        what: &'static str,
    ) -> Result<(), BackendError> {
        cmd.encode(&mut self.wbuf);
        self.flush(limit, what).await
    }

    /// Reads the reply to a command sent with [`BackendConn::send`].
    pub async fn reply(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<Reply, BackendError> {
        self.read_reply(limit, what).await
    }

    /// Sends `cmds` and reads one reply each: in one write when the backend offers PIPELINING
    /// (RFC 2920), one at a time otherwise. Every reply is read, so the connection stays in
    /// step whatever the backend answered.
    pub async fn pipeline(
        &mut self,
        cmds: &[Command],
        limit: Duration,
    ) -> Result<Vec<Reply>, BackendError> {
        self.pipeline_after(&[], cmds, limit).await
    }

    /// As [`BackendConn::pipeline`], after `prefix` lines (XFORWARD) that must each get a 2xx
    /// (else the backend's reply is `Err(Refused)`); their replies are not returned.
    pub async fn pipeline_after(
        &mut self,
        prefix: &[String],
        cmds: &[Command],
        limit: Duration,
    ) -> Result<Vec<Reply>, BackendError> {
        if !self.caps.offers(Extension::Pipelining) {
            for line in prefix {
                let reply = self.raw(line.as_bytes(), limit, "XFORWARD").await?;
                if !reply.is_positive() {
                    return Err(BackendError::Refused(reply));
                }
            }
        }
        let mut replies = Vec::with_capacity(cmds.len());
        if self.caps.offers(Extension::Pipelining) {
            for line in prefix {
                self.wbuf.extend_from_slice(line.as_bytes());
                self.wbuf.extend_from_slice(b"\r\n");
            }
            for cmd in cmds {
                cmd.encode(&mut self.wbuf);
            }
            self.flush(limit, "MAIL").await?;
            let mut refused = None;
            for _ in prefix {
                let reply = self.read_reply(limit, "XFORWARD").await?;
                if !reply.is_positive() {
                    refused.get_or_insert(reply);
                }
            }
            for cmd in cmds {
                replies.push(self.read_reply(limit, cmd.verb()).await?);
            }
            if let Some(reply) = refused {
                return Err(BackendError::Refused(reply));
            }
        } else {
            for cmd in cmds {
                replies.push(self.command(cmd, limit, cmd.verb()).await?);
            }
        }
        Ok(replies)
    }

    /// Sends one command and reads its reply.
    pub async fn command(
        &mut self,
        cmd: &Command,
        limit: Duration,
        what: &'static str,
    ) -> Result<Reply, BackendError> {
        cmd.encode(&mut self.wbuf);
        self.flush(limit, what).await?;
        self.read_reply(limit, what).await
    }

    /// Sends one raw line (an AUTH answer, XCLIENT) and reads the reply.
    pub async fn raw(
        &mut self,
        line: &[u8],
        limit: Duration,
        what: &'static str,
    ) -> Result<Reply, BackendError> {
        self.wbuf.extend_from_slice(line);
        self.wbuf.extend_from_slice(b"\r\n");
        self.flush(limit, what).await?;
        self.read_reply(limit, what).await
    }

    /// Sends DATA content (unstuffed CRLF lines), dot-stuffed. Small chunks are gathered up to
    /// `DATA_BATCH` octets, so a small message leaves in one write together with its final dot.
    pub async fn send_content(
        &mut self,
        content: &[u8],
        at_line_start: &mut bool,
        limit: Duration,
    ) -> Result<(), BackendError> {
        if content.len() >= DATA_BATCH
            && self.wbuf.is_empty()
            && is_wire_ready(content, *at_line_start)
        {
            // A large chunk that needs no stuffing goes out as it is, without a copy.
            timeout(limit, write_flush(&mut self.stream, content))
                .await
                .map_err(|_| BackendError::Timeout("DATA content"))??;
            *at_line_start = true;
            return Ok(());
        }
        dot_stuff_into(content, &mut self.wbuf, at_line_start);
        if self.wbuf.len() >= DATA_BATCH {
            self.flush(limit, "DATA content").await?;
        }
        Ok(())
    }

    /// Ends DATA and reads the backend's verdict.
    pub async fn finish_data(
        &mut self,
        at_line_start: bool,
        limit: Duration,
    ) -> Result<Reply, BackendError> {
        // The verdict is only what the backend says after the final dot: a reply that came
        // before it is a protocol error, and the connection is closed before the dot (the
        // backend keeps nothing). Bytes behind the verdict do not change it (the backend took
        // the message), but leave the connection unfit for another transaction: `is_open`
        // says so when the pool would hand it out.
        if !self.is_open() {
            return Err(BackendError::Protocol("a reply before the end of data"));
        }
        if !at_line_start {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        self.wbuf.extend_from_slice(b".\r\n");
        self.flush(limit, "end of data").await?;
        self.read_reply(limit, "end of data").await
    }

    /// Sends `content` as one BDAT chunk (CHUNKING, RFC 3030), as it is. With PIPELINING its
    /// reply is read at the end ([`BackendConn::finish_bdat`]); without, now (an error reply
    /// then fails the message at once).
    pub async fn send_chunk(
        &mut self,
        content: &[u8],
        limit: Duration,
    ) -> Result<(), BackendError> {
        use std::fmt::Write as _;
        let mut header = String::with_capacity(24);
        let _ = write!(header, "BDAT {}\r\n", content.len());
        self.wbuf.extend_from_slice(header.as_bytes());
        if content.len() >= DATA_BATCH {
            self.flush(limit, "BDAT").await?;
            timeout(limit, write_flush(&mut self.stream, content))
                .await
                .map_err(|_| BackendError::Timeout("BDAT content"))??;
        } else {
            self.wbuf.extend_from_slice(content);
        }
        self.bdat_pending += 1;
        if !self.caps.offers(Extension::Pipelining) {
            self.flush(limit, "BDAT").await?;
            let reply = self.read_reply(limit, "BDAT").await?;
            self.bdat_pending -= 1;
            if !reply.is_positive() {
                return Err(BackendError::Refused(reply));
            }
        } else if self.wbuf.len() >= DATA_BATCH {
            self.flush(limit, "BDAT").await?;
        }
        Ok(())
    }

    /// `BDAT 0 LAST` and the backend's verdict: the first refusal of a chunk, or its reply to
    /// the last.
    pub async fn finish_bdat(&mut self, limit: Duration) -> Result<Reply, BackendError> {
        self.wbuf.extend_from_slice(b"BDAT 0 LAST\r\n");
        self.flush(limit, "BDAT LAST").await?;
        let mut refusal = None;
        while self.bdat_pending > 0 {
            let reply = self.read_reply(limit, "BDAT").await?;
            self.bdat_pending -= 1;
            if !reply.is_positive() && refusal.is_none() {
                refusal = Some(reply);
            }
        }
        let last = self.read_reply(limit, "BDAT LAST").await?;
        Ok(refusal.unwrap_or(last))
    }

    /// QUIT, waiting briefly for the 221; the connection is closed either way.
    pub async fn quit(mut self, limit: Duration) {
        let _ = self.command(&Command::Quit, limit, "QUIT").await;
    }

    async fn flush(&mut self, limit: Duration, what: &'static str) -> Result<(), BackendError> {
        timeout(limit, write_flush(&mut self.stream, &self.wbuf))
            .await
            .map_err(|_| BackendError::Timeout(what))??;
        self.wbuf.clear();
        if self.wbuf.capacity() > 2 * DATA_BATCH {
            self.wbuf = BytesMut::with_capacity(512);
        }
        Ok(())
    }

    async fn read_reply(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<Reply, BackendError> {
        // One timer per connection, moved forward for each reply: moving a registered timer
        // later is cheap, while a new timer per reply would wake the runtime's driver each
        // time (it is earlier than the session timers the driver parked on).
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + limit);
        let Self {
            stream,
            rbuf,
            codec,
            timer,
            ..
        } = self;
        let read = async {
            loop {
                if let Some(reply) = codec.decode(rbuf)? {
                    return Ok(reply);
                }
                rbuf.reserve(512);
                if stream.read_buf(rbuf).await? == 0 {
                    return Err(BackendError::Closed);
                }
            }
        };
        tokio::select! {
            biased;
            reply = read => reply,
            _ = timer.as_mut() => Err(BackendError::Timeout(what)),
        }
    }
}

/// Writes all of `bytes` and flushes (TLS keeps records until flushed; a socket does not).
async fn write_flush<IO: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Stream<IO>,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
