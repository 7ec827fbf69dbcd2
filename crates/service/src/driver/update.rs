//! Session updates: what a reply changes in the session (HELO, transaction, recipients, DATA
//! state, AUTH, codec mode), when the session closes, and the STARTTLS upgrade.

use std::sync::Arc;
use tokio::time::Instant;

use attitude_codec::{Extensions, Mode, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use super::{DataState, Driver, Pending, SessionResult, Step};
use crate::BoxError;
use crate::replies;
use crate::request::{Request, Transaction};

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    /// Applies `reply` (to the request `pending` remembers) to the session, queues it for the
    /// client, and says whether the session goes on.
    pub(super) async fn update(&mut self, pending: Pending, reply: Reply) -> Step {
        // Whatever the backend made of the `*`, the client hears why its exchange ended.
        let reply = match pending {
            // (A 421, the guard's ban, still closes the session.)
            Pending::AuthCancel if reply.code() != 421 => replies::auth_line_too_long(),
            _ => reply,
        };
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
                // What the client was offered is what it may use.
                let (offered, size) = if helo.extended {
                    Extensions::from_ehlo(&reply)
                } else {
                    (Extensions::EMPTY, None)
                };
                session.offered = offered;
                session.size_limit = size.and_then(std::num::NonZeroU64::new);
                session.helo = Some(helo);
                session.transaction = None;
            }
            Pending::Bdat(size) if reply.code() != 421 => {
                // The reply to BDAT comes once its chunk is read.
                if !reply.is_positive() {
                    self.codec.discard_chunk();
                    self.bdat_refused = Some(Box::new(reply));
                    return Step::Continue;
                }
                if let Some(txn) = session.transaction.as_mut()
                    && !txn.bdat
                {
                    txn.bdat = true;
                    self.codec.begin_bdat_message(txn.mail.body);
                    self.data = Some(Box::new(DataState::new()));
                }
                if let Some(data) = self.data.as_mut() {
                    data.chunk = size;
                }
                return Step::Continue;
            }
            Pending::Mail(mail) if reply.is_positive() => {
                session.transaction = Some(Box::new(Transaction {
                    mail: *mail,
                    rcpts: Vec::new(),
                    started: std::time::Instant::now(),
                    data_bytes: 0,
                    bdat: false,
                }));
            }
            Pending::Rcpt(rcpt) if reply.is_positive() => {
                if let Some(txn) = session.transaction.as_mut() {
                    txn.rcpts.push(rcpt);
                }
            }
            Pending::Data if reply.code() == 354 => {
                self.data = Some(Box::new(DataState::new()));
                self.codec.set_mode(Mode::Data);
            }
            Pending::DataEnd => {
                if reply.is_positive() {
                    session.messages += 1;
                }
                session.transaction = None;
            }
            Pending::Rset if reply.is_positive() => {
                session.transaction = None;
                // A BDAT message the client gave up between chunks.
                self.data = None;
            }
            Pending::AuthCancel => {
                self.codec.set_mode(Mode::Command);
                self.auth = None;
            }
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
            self.waiting_since = Instant::now();
        }
        self.push(&reply);
        if quit {
            return Step::Close(SessionResult::Quit);
        }
        if starttls && reply.code() == 220 {
            // Boxed: the handshake's state (rustls' and the accept future's) would otherwise be
            // part of every session's future, idle or not.
            return Box::pin(self.start_tls()).await;
        }
        if reply.code() == 421 {
            // 421 means "closing the transmission channel" (RFC 5321 §3.8).
            return Step::Close(SessionResult::Policy);
        }
        if reply.is_error() {
            let session = Arc::make_mut(&mut self.session);
            session.errors += 1;
            if session.errors >= self.limits().max_errors {
                self.push(&replies::too_many_errors());
                return Step::Close(SessionResult::TooManyErrors);
            }
        }
        Step::Continue
    }

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
                session.offered = Extensions::EMPTY;
                session.size_limit = None;
                session.transaction = None;
                session.auth = None;
                if let Some(info) = &info {
                    self.metrics.record_tls(info);
                }
                self.waiting_since = Instant::now();
                Step::Continue
            }
            Err(error) => {
                tracing::info!(target: "attitude::session", session = self.session.id, client = %self.session.client, %error, "TLS handshake failed");
                Step::Close(SessionResult::IoError)
            }
        }
    }
}
