use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Body, Command, EnhancedStatus, Extension, Extensions, Reply};
use tower_service::Service;

use super::{ProtocolConfig, ResponseFuture, relayed};
use crate::request::{DataOutcome, Event, Request, Session};
use crate::{BoxError, replies};

/// RFC 5321 sequencing and local replies; see the module docs.
#[derive(Debug, Clone)]
pub struct Protocol<S> {
    inner: S,
    config: Arc<ProtocolConfig>,
}

fn status(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

impl<S> Protocol<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: Arc<ProtocolConfig>) -> Self {
        Self { inner, config }
    }

    /// The EHLO reply: attitude's own extensions, and those every usable backend offers that
    /// attitude relays end to end; SIZE is the smaller of attitude's limit and the backends'
    /// (less the headroom for what attitude adds).
    fn ehlo_reply(&self, session: &Session) -> Reply {
        let offer = self
            .config
            .backends
            .as_ref()
            .map(|b| b.get())
            .unwrap_or_default();
        let mut relayed = offer.extensions.intersection(relayed());
        // BDAT is attitude's own (it goes on as DATA to a backend without CHUNKING); a
        // BINARYMIME message can only go on as BDAT.
        if !offer.extensions.contains(Extension::Chunking) {
            relayed = relayed.without(Extension::BinaryMime);
        }
        if session.tls.is_none() || !self.config.requiretls {
            relayed = relayed.without(Extension::RequireTls);
        }
        let mut reply = Reply::plain(250, self.config.hostname.clone())
            .with_line("PIPELINING")
            .with_line(format!("SIZE {}", self.size_limit(offer.size_limit)));
        for ext in relayed.iter() {
            reply = reply.with_line(ext.keyword());
        }
        reply = reply.with_line("CHUNKING").with_line("ENHANCEDSTATUSCODES");
        if session.starttls && session.tls.is_none() {
            reply = reply.with_line("STARTTLS");
        }
        let offered = self.offered(session);
        if offered.is_empty() {
            reply
        } else {
            reply.with_line(format!("AUTH {}", offered.join(" ")))
        }
    }

    /// The SIZE limit with the backends' `limit` (less the headroom).
    fn size_limit(&self, backends: Option<u64>) -> u64 {
        let own = self.config.max_message_size;
        backends.map_or(own, |limit| {
            own.min(limit.saturating_sub(self.config.size_headroom).max(1))
        })
    }

    /// The limit this session was told (EHLO), or attitude's own.
    fn session_limit(&self, session: &Session) -> u64 {
        session
            .size_limit
            .map_or(self.config.max_message_size, |l| l.get())
    }

    /// Parameters of MAIL or RCPT need extensions this session was offered.
    fn not_offered(session: &Session, needs: Extensions) -> Option<Reply> {
        let missing = needs.missing_from(session.offered);
        if missing.is_empty() {
            None
        } else if missing.contains(Extension::SmtpUtf8) {
            Some(Reply::new(555, status(5, 6, 7), "SMTPUTF8 is not offered"))
        } else {
            Some(Reply::new(
                555,
                status(5, 5, 4),
                format!("Parameters of {missing} are not offered"),
            ))
        }
    }

    /// AUTH mechanisms offered now (without TLS: only where plaintext is allowed).
    fn offered(&self, session: &Session) -> Vec<String> {
        self.config
            .auth
            .as_ref()
            .map_or_else(Vec::new, |auth| auth.offered(session.tls.is_some()))
    }

    /// The reply for a request that does not go inward, or `None` to forward it.
    fn check(&self, req: &Request) -> Option<Reply> {
        let session = &req.session;
        let bad_sequence = |what: &'static str| Some(Reply::new(503, status(5, 5, 1), what));
        let not_offered = |what: &'static str| Some(Reply::new(502, status(5, 5, 1), what));
        match &req.event {
            Event::Command(cmd) => match cmd {
                Command::Ehlo(_) | Command::Helo(_) => None,
                Command::Mail(mail) => {
                    if session.helo.is_none() {
                        return bad_sequence("Send HELO/EHLO first");
                    }
                    if session.transaction.is_some() {
                        return bad_sequence("Nested MAIL command");
                    }
                    if self.config.require_tls && session.tls.is_none() {
                        return Some(Reply::new(
                            530,
                            status(5, 7, 0),
                            "Must issue a STARTTLS command first",
                        ));
                    }
                    if self.config.require_auth && session.auth.is_none() {
                        return Some(Reply::new(530, status(5, 7, 0), "Authentication required"));
                    }
                    let mut needs = mail.needs();
                    if mail.param("AUTH").is_some() {
                        needs.insert(Extension::Auth);
                    }
                    if let Some(reply) = Self::not_offered(session, needs) {
                        return Some(reply);
                    }
                    let limit = self.session_limit(session);
                    if mail.size.is_some_and(|s| s.get() > limit) {
                        return Some(replies::too_big(limit));
                    }
                    None
                }
                Command::Rcpt(rcpt) => {
                    let Some(txn) = &session.transaction else {
                        return bad_sequence("Need MAIL before RCPT");
                    };
                    if txn.rcpts.len() >= self.config.max_recipients {
                        return Some(Reply::new(452, status(4, 5, 3), "Too many recipients"));
                    }
                    let ascii = rcpt.address.is_ascii()
                        && rcpt
                            .params
                            .iter()
                            .all(|p| p.value.as_ref().is_none_or(|v| v.is_ascii()));
                    if !ascii && !txn.mail.smtputf8 {
                        return Some(Reply::new(
                            553,
                            status(5, 6, 7),
                            "Non-ASCII address requires SMTPUTF8",
                        ));
                    }
                    Self::not_offered(session, rcpt.needs())
                }
                Command::Data => match &session.transaction {
                    None => bad_sequence("Need MAIL and RCPT before DATA"),
                    Some(txn) if txn.rcpts.is_empty() => {
                        Some(Reply::new(554, status(5, 5, 1), "No valid recipients"))
                    }
                    Some(txn) if txn.mail.body == Some(Body::BinaryMime) => {
                        bad_sequence("BODY=BINARYMIME needs BDAT, not DATA")
                    }
                    Some(txn) if txn.bdat => bad_sequence("DATA after BDAT"),
                    Some(_) => None,
                },
                Command::Rset | Command::Quit => None,
                Command::Noop => Some(Reply::new(250, status(2, 0, 0), "OK")),
                Command::Vrfy(_) => Some(Reply::new(
                    252,
                    status(2, 5, 0),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )),
                Command::Help => Some(Reply::new(
                    214,
                    status(2, 0, 0),
                    "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
                )),
                Command::Expn(_) => not_offered("EXPN is not offered"),
                Command::StartTls => {
                    if session.tls.is_some() {
                        return bad_sequence("Already in TLS");
                    }
                    if !session.starttls {
                        return not_offered("STARTTLS is not offered");
                    }
                    if session.transaction.is_some() || session.auth.is_some() {
                        return bad_sequence("STARTTLS must come before MAIL and AUTH");
                    }
                    // The driver switches to TLS once this reply is out.
                    Some(Reply::new(220, status(2, 0, 0), "Ready to start TLS"))
                }
                Command::Auth { mechanism, .. } => {
                    let offered = self.offered(session);
                    if offered.is_empty() {
                        return not_offered("AUTH is not offered");
                    }
                    if session.helo.as_ref().is_none_or(|h| !h.extended) {
                        return bad_sequence("Send EHLO first");
                    }
                    if session.auth.is_some() {
                        return bad_sequence("Already authenticated");
                    }
                    if session.transaction.is_some() {
                        return bad_sequence("AUTH is not allowed during a mail transaction");
                    }
                    if !offered.contains(mechanism) {
                        return Some(Reply::new(
                            504,
                            status(5, 5, 4),
                            "Unrecognized authentication type",
                        ));
                    }
                    None
                }
                Command::Bdat { size, .. } => {
                    if !session.offered.contains(Extension::Chunking) {
                        return not_offered("CHUNKING is not offered after HELO; use DATA");
                    }
                    match &session.transaction {
                        None => bad_sequence("Need MAIL and RCPT before BDAT"),
                        Some(txn) if txn.rcpts.is_empty() => {
                            Some(Reply::new(554, status(5, 5, 1), "No valid recipients"))
                        }
                        Some(txn) => {
                            let limit = self.session_limit(session);
                            (txn.data_bytes.saturating_add(*size) > limit)
                                .then(|| replies::too_big(limit))
                        }
                    }
                }
                Command::Unsupported(_) => not_offered("Command not implemented"),
            },
            Event::Invalid(error) => Some(error.reply()),
            // The driver reads AUTH lines only after a 334 challenge, which only comes from an
            // exchange the relay carries, and only when AUTH is offered.
            Event::AuthLine(_) if self.config.auth.is_none() => {
                bad_sequence("No AUTH exchange in progress")
            }
            Event::AuthLine(_) => None,
            Event::DataChunk(_) => {
                let txn = session.transaction.as_ref()?;
                let limit = self.session_limit(session);
                (txn.data_bytes > limit).then(|| replies::too_big(limit))
            }
            Event::DataEnd(_) | Event::Close => None,
        }
    }
}

impl<S> Service<Request> for Protocol<S>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(reply) = self.check(&req) {
            // A refused chunk: the inner services will see the failure at end of data.
            return ResponseFuture::local(reply);
        }
        let on_success = match &req.event {
            Event::Command(Command::Ehlo(_)) => Some(self.ehlo_reply(&req.session)),
            Event::Command(Command::Helo(_)) => Some(Reply::new(
                250,
                status(2, 0, 0),
                self.config.hostname.clone(),
            )),
            Event::Command(Command::Rset) => Some(Reply::new(250, status(2, 0, 0), "Flushed")),
            Event::Command(Command::Quit) => Some(Reply::new(
                221,
                status(2, 0, 0),
                format!("{} closing connection", self.config.hostname),
            )),
            Event::DataEnd(DataOutcome::Failed(reply)) => Some(reply.clone()),
            _ => None,
        };
        ResponseFuture::inner(self.inner.call(req), on_success)
    }
}
