//! A session's milter state: one connection per milter, the stages asked, what a failure
//! leaves behind, the held message.

use std::sync::Arc;

use attitude_codec::{EnhancedStatus, MailFrom, RcptTo, Reply};
use attitude_engines::milter::proto::action;
use attitude_engines::milter::{Command as MilterCommand, Conn, MilterError, Stage, Verdict};
use attitude_layers::Mode;
use attitude_service::{Request, Session};

use super::layer::{DefaultAction, MilterPolicy, MiltersConfig};
use crate::content::ByteBudget;

/// Macros for one stage: `(name, value)`.
pub(super) type Macros = Vec<(String, String)>;

/// One milter's state in a session.
pub(super) enum Link {
    /// Not connected yet (the session has sent no MAIL).
    Idle,
    /// Connected and negotiated; `done` when it accepted the transaction (not asked again
    /// until the next).
    Open { conn: Box<Conn>, done: bool },
    /// Not asked again in this session (it accepted the connection, or failed and its default
    /// action is accept).
    Gone,
}

/// A message held until the milters have seen it.
pub(super) struct Held {
    pub(super) opening: Request,
    pub(super) bytes: Vec<u8>,
    /// Its share of the byte budget, given back when it is dropped.
    pub(super) reserved: usize,
    pub(super) budget: Arc<ByteBudget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// The session's milter state.
pub(super) struct State {
    pub(super) links: Vec<Link>,
    /// A milter failed (or refused the connection) and every further MAIL, RCPT and message of
    /// the session gets this.
    pub(super) failed: Option<Reply>,
    /// A transaction is open at the milters.
    pub(super) in_txn: bool,
    /// A milter asked for the message to be dropped.
    pub(super) discard: bool,
    pub(super) held: Option<Held>,
    /// The transaction's sender and the recipients the backend accepted, with their
    /// parameters (to open it again with a milter's envelope changes).
    pub(super) envelope: Option<(MailFrom, Vec<RcptTo>)>,
}

/// `{name}` for a macro of more than one letter.
pub(super) fn pair(name: &str, value: impl Into<String>) -> (String, String) {
    let name = if name.len() > 1 {
        format!("{{{name}}}")
    } else {
        name.to_owned()
    };
    (name, value.into())
}

/// The message's queue id as attitude's log and trace header name it.
pub(super) fn queue_id(session: &Session) -> String {
    format!("{}.{}", session.id, session.messages + 1)
}

/// A milter's verdict as the reply for the client (`None`: go on).
pub(super) fn refusal(verdict: &Verdict) -> Option<Reply> {
    match verdict {
        Verdict::Continue | Verdict::Accept | Verdict::Skip | Verdict::Discard => None,
        Verdict::Reject => Some(Reply::new(
            550,
            EnhancedStatus::new(5, 7, 1),
            "Command rejected",
        )),
        Verdict::Tempfail => Some(tempfail()),
        Verdict::Reply(text) => Some(milter_reply(text)),
    }
}

/// The reply a milter wrote (`SMFIR_REPLYCODE`: `550 5.7.1 text`, the parser checked the code),
/// its first line, its enhanced status kept when it fits the code, its text cut to printable
/// ASCII.
fn milter_reply(text: &str) -> Reply {
    let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(550);
    let line = text.get(4..).unwrap_or("").lines().next().unwrap_or("");
    let (status, rest) = match EnhancedStatus::parse_prefix(line) {
        Some((status, rest)) if u16::from(status.class) == code / 100 => (status, rest),
        _ => (
            EnhancedStatus::new(if code >= 500 { 5 } else { 4 }, 7, 1),
            line,
        ),
    };
    let text: String = rest
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    Reply::new(
        code,
        status,
        if text.is_empty() {
            "Command rejected".to_string()
        } else {
            text
        },
    )
}

/// `451 4.7.1`: a milter's TEMPFAIL, or the default action `tempfail` (Postfix's text).
fn tempfail() -> Reply {
    Reply::new(
        451,
        EnhancedStatus::new(4, 7, 1),
        "Service unavailable - try again later",
    )
}

/// The result label of a verdict.
pub(super) fn label(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Continue => "continue",
        Verdict::Accept => "accept",
        Verdict::Reject | Verdict::Reply(_) => "reject",
        Verdict::Tempfail => "tempfail",
        Verdict::Discard => "discard",
        Verdict::Skip => "skip",
    }
}

/// The reply every further command gets after a milter failed with `action` (`None`: accept).
pub(super) fn fallback(action: DefaultAction) -> Option<Reply> {
    match action {
        DefaultAction::Accept => None,
        DefaultAction::Tempfail => Some(tempfail()),
        DefaultAction::Reject => Some(Reply::new(
            554,
            EnhancedStatus::new(5, 7, 1),
            "Service unavailable",
        )),
    }
}

/// The connect and HELO stages of `session`, with their macros.
fn connection(config: &MiltersConfig, session: &Session) -> Vec<(Stage, Macros, MilterCommand)> {
    let client = session.client;
    let ip = client.ip().to_canonical().to_string();
    let macros = vec![
        pair("j", config.hostname.clone()),
        pair("daemon_name", config.daemon_name.clone()),
        pair("daemon_addr", session.local.ip().to_canonical().to_string()),
        pair("v", concat!("attitude ", env!("CARGO_PKG_VERSION"))),
        pair("_", format!("[{ip}] [{ip}]")),
        pair("client_addr", ip.clone()),
        pair("client_port", client.port().to_string()),
    ];
    // attitude does not verify the client's name: `{client_name}` is not sent, and the
    // host name is the address literal, as Postfix sends it for an unverified client.
    let mut stages = vec![(
        Stage::Connect,
        macros,
        MilterCommand::Connect {
            hostname: format!("[{ip}]"),
            addr: Some(client),
        },
    )];
    if let Some(helo) = &session.helo {
        let mut macros = Vec::new();
        if let Some(tls) = &session.tls {
            macros.push(pair("tls_version", tls.version.to_string()));
            macros.push(pair("cipher", tls.cipher.to_string()));
        }
        stages.push((Stage::Helo, macros, MilterCommand::Helo(helo.name.clone())));
    }
    stages
}

/// The MAIL or RCPT arguments as a milter gets them: `<address>`, then the parameters.
pub(super) fn args(address: &str, params: &[attitude_codec::Param]) -> Vec<String> {
    std::iter::once(format!("<{address}>"))
        .chain(params.iter().map(|p| match &p.value {
            Some(v) => format!("{}={v}", p.keyword),
            None => p.keyword.clone(),
        }))
        .collect()
}

impl State {
    /// A milter failed at `stage`: counted, logged, and its default action taken.
    pub(super) fn failed(
        &mut self,
        policy: &MilterPolicy,
        i: usize,
        stage: Stage,
        error: &MilterError,
    ) {
        policy.metrics.failure(error.kind());
        policy.metrics.call(stage.label(), "failed");
        tracing::warn!(milter = %policy.name, stage = stage.label(), %error, action = ?policy.default_action, "milter failed");
        self.links[i] = Link::Gone;
        if self.failed.is_none() {
            self.failed = fallback(policy.default_action);
        }
    }

    /// Connects the milters not connected yet and tells them the connection and HELO.
    pub(super) async fn open(&mut self, config: &MiltersConfig, session: &Session) {
        for (i, policy) in config.milters.iter().enumerate() {
            if !matches!(self.links[i], Link::Idle) {
                continue;
            }
            let mut conn = match policy.milter.open(action::ALL).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.failed(policy, i, Stage::Connect, &e);
                    continue;
                }
            };
            let mut keep = true;
            for (stage, macros, command) in connection(config, session) {
                match conn.stage(stage, macros, command).await {
                    Ok(Verdict::Continue) => policy.metrics.call(stage.label(), "continue"),
                    Ok(Verdict::Accept) => {
                        // The whole connection is accepted: not asked again.
                        policy.metrics.call(stage.label(), "accept");
                        keep = false;
                        break;
                    }
                    Ok(verdict) => {
                        policy.metrics.call(stage.label(), label(&verdict));
                        let enforce = config.mode == Mode::Enforce;
                        tracing::info!(milter = %policy.name, stage = stage.label(), verdict = label(&verdict), dry_run = !enforce, "milter refused the connection");
                        if enforce && self.failed.is_none() {
                            self.failed =
                                refusal(&verdict).or_else(|| fallback(DefaultAction::Reject));
                        }
                        keep = false;
                        break;
                    }
                    Err(e) => {
                        self.failed(policy, i, stage, &e);
                        break;
                    }
                }
            }
            if keep && matches!(self.links[i], Link::Idle) {
                self.links[i] = Link::Open {
                    conn: Box::new(conn),
                    done: false,
                };
            } else {
                self.links[i] = Link::Gone;
                conn.quit().await;
            }
        }
    }

    /// Asks every milter still in the transaction about `stage`; the first refusal (in
    /// enforce mode) is the reply.
    pub(super) async fn ask(
        &mut self,
        config: &MiltersConfig,
        stage: Stage,
        macros: Vec<(String, String)>,
        command: MilterCommand,
    ) -> Option<Reply> {
        for (i, policy) in config.milters.iter().enumerate() {
            let Link::Open { conn, done: false } = &mut self.links[i] else {
                continue;
            };
            match conn.stage(stage, macros.clone(), command.clone()).await {
                Ok(verdict) => {
                    policy.metrics.call(stage.label(), label(&verdict));
                    match verdict {
                        Verdict::Continue | Verdict::Skip => {}
                        Verdict::Accept => {
                            if let Link::Open { done, .. } = &mut self.links[i] {
                                *done = true;
                            }
                        }
                        Verdict::Discard => self.discard = true,
                        refused => {
                            let reply = refusal(&refused).expect("a refusal");
                            let enforce = config.mode == Mode::Enforce;
                            config.decisions.refused(reply.code(), enforce);
                            tracing::info!(milter = %policy.name, stage = stage.label(), %reply, dry_run = !enforce, "milter refused");
                            if enforce {
                                return Some(reply);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.failed(policy, i, stage, &e);
                    if let Some(reply) = &self.failed {
                        return Some(reply.clone());
                    }
                }
            }
        }
        None
    }

    /// The transaction ended without a message (RSET, a new MAIL, a failed message): the
    /// milters forget it.
    pub(super) async fn abort(&mut self, config: &MiltersConfig) {
        self.held = None;
        self.envelope = None;
        self.discard = false;
        if !std::mem::take(&mut self.in_txn) {
            return;
        }
        for (i, policy) in config.milters.iter().enumerate() {
            if let Link::Open { conn, done } = &mut self.links[i] {
                *done = false;
                if let Err(e) = conn.abort().await {
                    self.failed(policy, i, Stage::Mail, &e);
                }
            }
        }
    }

    /// The session ended: every milter is told.
    pub(super) async fn quit(&mut self) {
        for link in &mut self.links {
            if let Link::Open { conn, .. } = std::mem::replace(link, Link::Gone) {
                conn.quit().await;
            }
        }
    }

    /// Whether some milter still takes part in the transaction.
    pub(super) fn listening(&self) -> bool {
        self.links
            .iter()
            .any(|l| matches!(l, Link::Open { done: false, .. }))
    }
}
