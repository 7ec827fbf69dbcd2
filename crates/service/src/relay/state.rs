//! The relay's per-session state: the phase of the transaction, what to replay, the lease, and
//! how a transaction is reset or given up.

use std::net::SocketAddr;

use attitude_balance::{BackendError, FailureKind, Lease};
use attitude_codec::{Command, EnhancedStatus, Extensions, MailFrom, RcptTo, Reply};

use super::RelayShared;
use crate::replies;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Idle,
    /// An AUTH exchange: the client's next line is an answer for the backend.
    Auth,
    /// MAIL answered by attitude, a backend chosen, nothing sent to it yet.
    MailLocal,
    /// The backend refused MAIL for good: every RCPT gets that refusal.
    SenderRefused,
    /// A transaction open on the backend.
    Mail,
    /// DATA sent to the backend, its 354 not read yet (the client already has attitude's 354).
    DataPending,
    Data {
        at_line_start: bool,
    },
    /// BDAT chunks streaming to a backend that offers CHUNKING.
    Chunks,
    /// The backend refused DATA: the content is read and dropped, and the refusal is the reply
    /// to end of data.
    Refused,
    /// The backend was lost mid-transaction: every reply until the transaction ends is 4xx.
    Broken,
}

/// The transaction so far, to replay on another backend if the first fails before DATA.
#[derive(Debug)]
pub(super) struct Txn {
    pub(super) mail: MailFrom,
    pub(super) rcpts: Vec<RcptTo>,
    /// The extensions a backend must offer to take it (MAIL's and the recipients').
    pub(super) needs: Extensions,
    /// The message's id (Received header, XFORWARD IDENT, the session log).
    pub(super) ident: String,
    /// attitude's `Received:` header, sent before the message's first content.
    pub(super) trace: Option<String>,
    /// Backends that failed this transaction.
    pub(super) tried: Vec<SocketAddr>,
    /// The pool the first accepted recipient fixed (index into the relay's pools).
    pub(super) pool: Option<usize>,
    /// That recipient's route's message size limit.
    pub(super) size_limit: Option<u64>,
}

#[derive(Debug)]
pub(super) struct RelayState {
    /// The backend connection of the transaction in progress, or one the session keeps
    /// between transactions (pinned: authenticated, or PROXY identity).
    pub(super) lease: Option<Lease>,
    /// The pool `lease` came from (index into the relay's pools).
    pub(super) lease_pool: usize,
    pub(super) phase: Phase,
    /// Boxed: most of a session's life is between transactions.
    pub(super) txn: Option<Box<Txn>>,
    /// The session authenticated on its backend connection; if that connection is lost, the
    /// session cannot go on elsewhere.
    pub(super) authenticated: bool,
    pub(super) auth_lost: bool,
    /// The backend's reply to DATA, when it was not 354.
    pub(super) refusal: Option<Reply>,
}

impl RelayState {
    /// A session's state before its first transaction.
    pub(super) fn new() -> Self {
        Self {
            lease: None,
            lease_pool: 0,
            phase: Phase::Idle,
            txn: None,
            authenticated: false,
            auth_lost: false,
            refusal: None,
        }
    }

    /// Between transactions: a shareable connection goes back to the pool; a pinned one stays
    /// with the session, no longer counted in flight.
    pub(super) fn put_back(&mut self, mut lease: Lease) {
        if lease.poolable() {
            lease.release();
        } else {
            lease.park();
            self.lease = Some(lease);
        }
    }

    pub(super) fn fail(
        &mut self,
        shared: &RelayShared,
        error: &BackendError,
        during: &'static str,
    ) -> Reply {
        shared.metrics.failures.increment(1);
        if let Some(lease) = self.lease.take() {
            lease.failure(FailureKind::from(error));
            tracing::warn!(backend = %lease.addr(), %error, during, "backend failed");
        }
        if self.authenticated {
            self.auth_lost = true;
        }
        self.phase = Phase::Broken;
        replies::backend_lost(during)
    }

    /// Ends the transaction in progress (RSET), or aborts DATA/AUTH by dropping the connection.
    pub(super) async fn reset(&mut self, shared: &RelayShared) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        self.txn = None;
        self.refusal = None;
        let Some(lease) = self.lease.take() else {
            return;
        };
        match phase {
            // Nothing open on the backend.
            Phase::Idle | Phase::MailLocal | Phase::SenderRefused => self.put_back(lease),
            // Mid-DATA or mid-AUTH the backend would read "RSET" as content or an answer:
            // closing before the final dot is the only way to abort.
            Phase::Data { .. } | Phase::DataPending | Phase::Chunks | Phase::Auth => {}
            Phase::Mail | Phase::Refused | Phase::Broken => self.rset(shared, lease).await,
        }
    }

    /// Ends the backend's transaction on `lease` with RSET: a connection that takes it is put
    /// back ([`RelayState::put_back`]), one that does not is closed.
    pub(super) async fn rset(&mut self, shared: &RelayShared, mut lease: Lease) {
        let result = lease
            .conn()
            .command(&Command::Rset, shared.config.command_timeout, "RSET")
            .await;
        if matches!(result, Ok(ref r) if r.is_positive()) {
            self.put_back(lease);
        }
    }
}

/// A backend's 421 means "I am closing": for the client the session goes on, so it becomes a
/// 451 (same text) and the backend connection is dropped.
pub(super) fn soften_421(reply: Reply) -> Reply {
    if reply.code() == 421 {
        Reply::from_parts(
            451,
            reply.status().or(Some(EnhancedStatus::new(4, 3, 2))),
            reply.lines().to_vec(),
        )
    } else {
        reply
    }
}
