//! Frames to events: what the driver passes to the command stack for each decoded frame, and
//! what it remembers to update the session once the reply is back. The STARTTLS injection guard
//! sits here: bytes pipelined behind STARTTLS never run.

use std::sync::Arc;

use attitude_codec::{Command, Frame, Mode, Reply};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use super::{Driver, Pending, SessionResult, Step};
use crate::BoxError;
use crate::auth::Exchange;
use crate::replies;
use crate::request::{DataOutcome, Event, Helo, Request};

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    /// The event for `frame` and what to update after its reply; `Err` when the frame is
    /// handled without a call (the rest of a failed message, an injection after STARTTLS).
    pub(super) fn event(&mut self, frame: Frame) -> Result<(Event, Pending), Step> {
        let pair = match frame {
            Frame::Command(cmd) => {
                let junk = match &cmd {
                    Command::Noop
                    | Command::Rset
                    | Command::Help
                    | Command::Vrfy(_)
                    | Command::Expn(_) => true,
                    // The EHLO after STARTTLS comes after the session started over (no HELO).
                    Command::Helo(_) | Command::Ehlo(_) => self.session.helo.is_some(),
                    _ => false,
                };
                if junk {
                    self.junk += 1;
                    let limit = self.limits().junk_command_limit;
                    if limit > 0 && self.junk > limit {
                        tracing::info!(target: "attitude::session", session = self.session.id, client = %self.session.client, limit, "too many junk commands; closing");
                        self.push(&replies::too_many_junk_commands());
                        return Err(Step::Close(SessionResult::JunkCommands));
                    }
                }
                let pending = match &cmd {
                    Command::Helo(name) => Pending::Helo(Helo {
                        name: name.clone(),
                        extended: false,
                    }),
                    Command::Ehlo(name) => Pending::Helo(Helo {
                        name: name.clone(),
                        extended: true,
                    }),
                    Command::Mail(mail) => Pending::Mail(Box::new(mail.clone())),
                    Command::Rcpt(rcpt) => Pending::Rcpt(rcpt.address.clone()),
                    Command::Data => Pending::Data,
                    Command::Bdat { size, .. } => Pending::Bdat(*size),
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
                        self.push(&replies::starttls_injection());
                        return Err(Step::Close(SessionResult::Policy));
                    }
                    Command::StartTls => Pending::StartTls,
                    Command::Auth { mechanism, initial } => {
                        self.auth = Some(Box::new(Exchange::new(mechanism, initial.as_deref())));
                        Pending::Auth
                    }
                    _ => Pending::Other,
                };
                (Event::Command(cmd), pending)
            }
            Frame::Invalid(_) if self.codec.mode() == Mode::Auth => {
                // A line the exchange cannot take (over-long): the exchange is cancelled as the
                // client's own `*` would cancel it (RFC 4954 §4), the backend is told so, and
                // nothing the client sends next is read as an answer.
                (
                    Event::AuthLine(Bytes::from_static(b"*")),
                    Pending::AuthCancel,
                )
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
                    return Err(Step::Continue);
                }
                if let Some(txn) = Arc::make_mut(&mut self.session).transaction.as_mut() {
                    txn.data_bytes += chunk.len() as u64;
                }
                (Event::DataChunk(chunk), Pending::Chunk)
            }
            Frame::ChunkEnd { last, result } => {
                if let Some(reply) = self.bdat_refused.take() {
                    // A refused BDAT: its reply, now that its chunk is read.
                    return Err(Step::Answer(reply));
                }
                let failed = self
                    .data
                    .as_ref()
                    .and_then(|d| d.failed.clone())
                    .or_else(|| result.err().map(|e| e.reply()));
                if !last && failed.is_none() {
                    let size = self.data.as_ref().map_or(0, |d| d.chunk);
                    return Err(Step::Answer(Box::new(replies::chunk_received(size))));
                }
                // The last chunk, or a failed message: the end of it, as for DATA (a failure
                // is told at once; the chunks still in the pipeline get 503).
                self.data = None;
                let outcome = match failed {
                    Some(reply) => DataOutcome::Failed(reply),
                    None => DataOutcome::Complete,
                };
                (Event::DataEnd(outcome), Pending::DataEnd)
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
        Ok(pair)
    }
}
