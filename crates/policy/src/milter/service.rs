//! The milter layer's service: each event to the session's milters, then (unless refused) on
//! to the inner service; a message held until every milter has seen it, its changes applied,
//! then passed on.

use std::sync::{Arc, Mutex as SyncMutex};
use std::task::{Context, Poll};
use std::time::Instant;

use attitude_codec::{Command, EnhancedStatus, MailFrom, RcptTo, Reply};
use attitude_engines::milter::{Command as MilterCommand, Modification, Stage, Verdict};
use attitude_layers::Mode;
use attitude_service::{BoxError, BoxFuture, DataOutcome, Event, Request, replies};
use bytes::Bytes;
use tokio::sync::Mutex;
use tower_service::Service;

use crate::held::{ready_call, replay};

use super::layer::{Discard, MilterPolicy, MiltersConfig};
use super::message::Message;
use super::state::{Held, Link, State, args, label, pair, queue_id, refusal};

/// Asks the listener's milters at each stage, holds each message until they have seen it and
/// applies their changes before it goes on; see the module docs.
pub struct MilterService<S> {
    inner: Arc<SyncMutex<S>>,
    config: Arc<MiltersConfig>,
    state: Arc<Mutex<State>>,
}

impl<S> std::fmt::Debug for MilterService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterService").finish_non_exhaustive()
    }
}

impl<S> MilterService<S> {
    /// Wraps `inner` (called from the response futures, after the milters).
    pub fn new(inner: S, config: Arc<MiltersConfig>) -> Self {
        let links = config.milters.iter().map(|_| Link::Idle).collect();
        Self {
            inner: Arc::new(SyncMutex::new(inner)),
            config,
            state: Arc::new(Mutex::new(State {
                links,
                failed: None,
                in_txn: false,
                discard: false,
                held: None,
                envelope: None,
            })),
        }
    }
}

impl<S> Service<Request> for MilterService<S>
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner service's readiness is awaited when it is called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (inner, config, state) = (self.inner.clone(), self.config.clone(), self.state.clone());
        Box::pin(async move {
            let mut st = state.lock().await;
            match &req.event {
                Event::Command(Command::Mail(mail)) => {
                    st.abort(&config).await;
                    if st.failed.is_none() {
                        st.open(&config, &req.session).await;
                    }
                    if let Some(reply) = &st.failed {
                        return Ok(reply.clone());
                    }
                    st.in_txn = true;
                    let session = &req.session;
                    let mut macros = vec![
                        pair("i", queue_id(session)),
                        pair("mail_addr", mail.address.clone()),
                    ];
                    if let Some(login) = &session.auth {
                        macros.push(pair("auth_authen", login.clone()));
                    }
                    let command = MilterCommand::Mail(args(&mail.address, &mail.params));
                    if let Some(reply) = st.ask(&config, Stage::Mail, macros, command).await {
                        return Ok(reply);
                    }
                    let mail = mail.clone();
                    let reply = ready_call(&inner, req).await?;
                    if reply.is_positive() {
                        st.envelope = Some((mail, Vec::new()));
                    }
                    return Ok(reply);
                }
                Event::Command(Command::Rcpt(rcpt)) => {
                    if let Some(reply) = &st.failed {
                        return Ok(reply.clone());
                    }
                    let macros = vec![pair("rcpt_addr", rcpt.address.clone())];
                    let command = MilterCommand::Rcpt(args(&rcpt.address, &rcpt.params));
                    if let Some(reply) = st.ask(&config, Stage::Rcpt, macros, command).await {
                        return Ok(reply);
                    }
                    let rcpt = rcpt.clone();
                    let reply = ready_call(&inner, req).await?;
                    if reply.is_positive()
                        && let Some((_, rcpts)) = st.envelope.as_mut()
                    {
                        rcpts.push(rcpt);
                    }
                    return Ok(reply);
                }
                Event::Command(cmd @ (Command::Data | Command::Bdat { .. })) => {
                    if let Some(reply) = &st.failed {
                        return Ok(reply.clone());
                    }
                    let data = matches!(cmd, Command::Data);
                    if st.held.is_some() {
                        // A later BDAT of a held message.
                        return Ok(replies::ok());
                    }
                    if st.listening() {
                        let macros = vec![pair("i", queue_id(&req.session))];
                        if let Some(reply) = st
                            .ask(&config, Stage::Data, macros, MilterCommand::Data)
                            .await
                        {
                            return Ok(reply);
                        }
                    }
                    if st.listening() {
                        st.held = Some(Held {
                            opening: req.clone(),
                            bytes: Vec::new(),
                            reserved: 0,
                            budget: config.budget.clone(),
                        });
                        // The backend is asked once the milters are done; the relay, too,
                        // answers 354 before the backend does.
                        return Ok(if data {
                            replies::start_data()
                        } else {
                            replies::ok()
                        });
                    }
                }
                Event::DataChunk(chunk) => {
                    if let Some(held) = st.held.as_mut() {
                        if !config.budget.try_reserve(chunk.len()) {
                            st.held = None;
                            return Ok(replies::over_budget());
                        }
                        held.reserved += chunk.len();
                        held.bytes.extend_from_slice(chunk);
                        return Ok(replies::ok());
                    }
                }
                Event::DataEnd(DataOutcome::Complete) => {
                    if st.held.is_some() {
                        let reply = end_of_message(&inner, &config, &mut st, req).await;
                        st.in_txn = false;
                        st.discard = false;
                        st.envelope = None;
                        for link in &mut st.links {
                            if let Link::Open { done, .. } = link {
                                *done = false;
                            }
                        }
                        return reply;
                    }
                    st.in_txn = false;
                }
                Event::DataEnd(DataOutcome::Failed(_))
                | Event::Command(Command::Rset | Command::Helo(_) | Command::Ehlo(_)) => {
                    st.abort(&config).await;
                }
                Event::Command(Command::Quit) | Event::Close => st.quit().await,
                _ => {}
            }
            drop(st);
            ready_call(&inner, req).await
        })
    }
}

/// End of message: each milter still in the transaction sees the message as the ones before
/// it left it; a refusal fails it (the relay resets the backend, which never saw it); the
/// changes are applied only once every milter has answered, then the message goes on.
async fn end_of_message<S>(
    inner: &Arc<SyncMutex<S>>,
    config: &MiltersConfig,
    st: &mut State,
    req: Request,
) -> Result<Reply, BoxError>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    let held = st.held.take().expect("a held message");
    let session = req.session.clone();
    let fail = |reply: Reply| Request {
        session: session.clone(),
        event: Event::DataEnd(DataOutcome::Failed(reply)),
    };
    let enforce = config.mode == Mode::Enforce;
    let mut message = Message::parse(&held.bytes);
    // Envelope changes of every milter, in order, applied once all have answered.
    let mut envelope: Vec<Modification> = Vec::new();
    // The milters that made them (their changes are counted as applied or refused).
    let mut changers: Vec<&MilterPolicy> = Vec::new();
    let macros = vec![pair("i", queue_id(&req.session))];
    for (i, policy) in config.milters.iter().enumerate() {
        let Link::Open { conn, done: false } = &mut st.links[i] else {
            continue;
        };
        let started = Instant::now();
        let outcome = conn
            .message(&message.fields(), message.body(), macros.clone())
            .await;
        let eom = match outcome {
            Ok(eom) => eom,
            Err(e) => {
                // Its changes, if it sent any before failing, are not applied.
                st.failed(policy, i, Stage::Eom, &e);
                match st.failed.clone() {
                    Some(reply) => return ready_call(inner, fail(reply)).await,
                    None => continue,
                }
            }
        };
        policy
            .metrics
            .seconds
            .record(started.elapsed().as_secs_f64());
        policy.metrics.call(Stage::Eom.label(), label(&eom.verdict));
        if let Some(reply) = refusal(&eom.verdict) {
            config.decisions.refused(reply.code(), enforce);
            tracing::info!(milter = %policy.name, %reply, dry_run = !enforce, "milter refused the message");
            if enforce {
                return ready_call(inner, fail(reply)).await;
            }
            continue;
        }
        if eom.verdict == Verdict::Discard {
            st.discard = true;
        }
        let mut changes: Vec<Modification> = Vec::with_capacity(eom.modifications.len());
        for m in eom.modifications {
            if is_envelope(&m) {
                if enforce {
                    if !changers.iter().any(|c| std::ptr::eq(*c, policy)) {
                        changers.push(policy);
                    }
                    envelope.push(m);
                }
                continue;
            }
            if let Modification::Quarantine(reason) = &m {
                // No quarantine store: a header says it, and it is counted.
                tracing::warn!(milter = %policy.name, reason, "milter quarantined the message (marked with X-Quarantined)");
                changes.push(Modification::AddHeader(
                    "X-Quarantined".into(),
                    reason.clone(),
                ));
            } else {
                changes.push(m.clone());
            }
            policy.metrics.modification(m.label());
        }
        if enforce {
            message.apply(&changes);
        }
    }
    if std::mem::take(&mut st.discard) && enforce {
        match config.discard {
            Discard::Reject => {
                let reply = Reply::new(
                    554,
                    EnhancedStatus::new(5, 7, 1),
                    "Message discarded by a mail filter",
                );
                config.decisions.refused(554, true);
                return ready_call(inner, fail(reply)).await;
            }
            Discard::Accept => {
                tracing::warn!(
                    session = req.session.id,
                    "a milter discarded the message: answered 250, not delivered ([milter] discard = \"accept\")"
                );
                let dropped = Reply::new(250, EnhancedStatus::new(2, 0, 0), "Ok: discarded");
                ready_call(inner, fail(dropped.clone())).await?;
                return Ok(dropped);
            }
        }
    }
    if !envelope.is_empty() {
        let counted = |kind| {
            for policy in &changers {
                policy.metrics.modification(kind);
            }
        };
        let Some((mail, rcpts)) = st.envelope.clone() else {
            return ready_call(inner, fail(replies::bad_sequence())).await;
        };
        match new_envelope(config, &req, mail, rcpts, &envelope).await {
            Ok(commands) => {
                // The backend's transaction again, with the changed envelope (the relay
                // routes each recipient: one of another pool fails the message).
                for command in commands {
                    let reply = ready_call(
                        inner,
                        Request {
                            session: session.clone(),
                            event: Event::Command(command),
                        },
                    )
                    .await?;
                    if !reply.is_positive() {
                        counted("envelope_refused");
                        return ready_call(inner, fail(reply)).await;
                    }
                }
                counted("envelope_applied");
            }
            Err(reply) => {
                counted("envelope_refused");
                tracing::warn!(session = req.session.id, %reply, "a milter's envelope change did not pass relay control or the rates: the message fails");
                return ready_call(inner, fail(reply)).await;
            }
        }
    }
    config.decisions.allow.increment(1);
    let content = Bytes::from(message.to_bytes());
    let opening = held.opening.clone();
    drop(held);
    if let Some(failed) = replay(inner, opening, content).await? {
        return ready_call(inner, fail(failed)).await;
    }
    ready_call(inner, req).await
}

fn is_envelope(m: &Modification) -> bool {
    matches!(
        m,
        Modification::AddRcpt(..) | Modification::DeleteRcpt(_) | Modification::ChangeFrom(..)
    )
}

/// An address as a milter writes it (`<a@b>` or `a@b`), as a command line's path.
fn path(address: &str) -> String {
    let bare = address.trim();
    let bare = bare.strip_prefix('<').unwrap_or(bare);
    format!("<{}>", bare.strip_suffix('>').unwrap_or(bare))
}

/// The envelope the milters' `changes` make of the transaction, as the commands that open it
/// again at the backend (RSET, MAIL, every recipient), once the new sender and each added
/// recipient passed relay control and the rates again; `Err`: the reply that fails the message.
async fn new_envelope(
    config: &MiltersConfig,
    req: &Request,
    mut mail: MailFrom,
    mut rcpts: Vec<RcptTo>,
    changes: &[Modification],
) -> Result<Vec<Command>, Reply> {
    let refused = |why: &str| {
        let code = config.envelope_code;
        Reply::new(
            code,
            EnhancedStatus::new(if code >= 500 { 5 } else { 4 }, 7, 1),
            format!("A mail filter changed the envelope: {why}"),
        )
    };
    let parse = |line: String| match Command::parse(line.as_bytes()) {
        Ok(command) => Ok(command),
        Err(_) => Err(refused("not a valid address")),
    };
    let mut checks: Vec<Command> = Vec::new();
    for change in changes {
        match change {
            Modification::ChangeFrom(from, params) => {
                let line = format!(
                    "MAIL FROM:{} {}",
                    path(from),
                    params.as_deref().unwrap_or("")
                );
                let Command::Mail(new) = parse(line.trim_end().to_owned())? else {
                    return Err(refused("not a valid sender"));
                };
                mail = new.clone();
                checks.push(Command::Mail(new));
            }
            Modification::AddRcpt(to, params) => {
                let line = format!("RCPT TO:{} {}", path(to), params.as_deref().unwrap_or(""));
                let Command::Rcpt(new) = parse(line.trim_end().to_owned())? else {
                    return Err(refused("not a valid recipient"));
                };
                rcpts.push(new.clone());
                checks.push(Command::Rcpt(new));
            }
            Modification::DeleteRcpt(to) => {
                let gone = path(to);
                rcpts.retain(|r| !format!("<{}>", r.address).eq_ignore_ascii_case(&gone));
            }
            _ => {}
        }
    }
    if rcpts.is_empty() {
        return Err(refused("no recipient left"));
    }
    let mut check = (config.recheck)();
    // The change is the milter's, not the client's: what the checks conclude about the client
    // (relay control marks a relay attempt suspicious, and the tarpit would slow it) stays
    // with this copy.
    let mut probe = (*req.session).clone();
    probe.marks = Default::default();
    let probe = std::sync::Arc::new(probe);
    for command in checks {
        let request = Request {
            session: probe.clone(),
            event: Event::Command(command),
        };
        let reply = match std::future::poll_fn(|cx| check.poll_ready(cx)).await {
            Ok(()) => check.call(request).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(reply) if reply.is_positive() => {}
            Ok(reply) => return Err(refused(&reply.lines().join(" "))),
            Err(_) => return Err(refused("it could not be checked")),
        }
    }
    Ok(std::iter::once(Command::Rset)
        .chain(std::iter::once(Command::Mail(mail)))
        .chain(rcpts.into_iter().map(Command::Rcpt))
        .collect())
}
