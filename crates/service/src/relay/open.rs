//! Opening a transaction on a backend: the checkout with failover, MAIL answered at once and
//! sent with the first RCPT, and the replay of the transaction so far on another backend when
//! one fails before DATA.

use std::net::SocketAddr;

use attitude_balance::{BackendCaps, CheckoutError, ClientIdentity, FailureKind, Lease};
use attitude_codec::{Body, Command, Extension, Extensions, MailFrom, RcptTo, Reply};

use super::RelayShared;
use super::state::{Phase, RelayState, Txn, soften_421};
use crate::replies;

/// The reply for a client whose transaction found no backend.
pub(super) fn unavailable(error: &CheckoutError) -> Reply {
    match error {
        CheckoutError::Busy => replies::backends_busy(),
        CheckoutError::Unsupported(needs) => replies::no_backend_offers(*needs),
        _ => replies::no_backend(),
    }
}

/// MAIL as it goes to a backend with `caps`: what it does not offer and that may be dropped is
/// dropped (SIZE, BODY=7BIT, AUTH= per RFC 4954 §5); AUTH= is the client's own only for an
/// authenticated session, `<>` otherwise. Everything else was checked against what the
/// backend offers (`Txn::needs`) and goes as the client sent it.
fn relayed_mail(mail: &MailFrom, caps: &BackendCaps, authenticated: bool) -> MailFrom {
    let mut relayed = mail.clone();
    if !caps.offers(Extension::Size) {
        relayed.size = None;
    }
    if relayed.body == Some(Body::SevenBit) && !caps.offers(Extension::EightBitMime) {
        relayed.body = None;
    }
    relayed.params.retain_mut(|p| {
        if p.keyword != "AUTH" {
            return true;
        }
        if !authenticated {
            p.value = Some("<>".into());
        }
        caps.offers(Extension::Auth)
    });
    relayed
}

/// A lease from pool `pool`, trying other backends while one cannot open a session, until
/// `tried` holds `1 + failover_attempts` of them. `Err` is the reply for the client.
pub(super) async fn checkout(
    shared: &RelayShared,
    pool: usize,
    identity: &ClientIdentity,
    tried: &mut Vec<SocketAddr>,
    needs: Extensions,
) -> Result<Lease, Reply> {
    let pool = &shared.pools[pool];
    let attempts = 1 + pool.config().failover_attempts as usize;
    loop {
        if tried.len() >= attempts {
            shared.metrics.unavailable.increment(1);
            return Err(unavailable(&CheckoutError::NoBackend));
        }
        match pool.checkout_for(identity, tried, needs).await {
            Ok(lease) => return Ok(lease),
            Err(CheckoutError::Backend { addr, error }) => {
                tracing::warn!(backend = %addr, %error, "backend unavailable; trying another");
                tried.push(addr);
                shared.metrics.failovers.increment(1);
            }
            Err(error) => {
                shared.metrics.unavailable.increment(1);
                return Err(unavailable(&error));
            }
        }
    }
}

/// How [`RelayState::open`] ended on a backend.
pub(super) enum Opened {
    /// The reply to the command at hand.
    Reply(Reply),
    /// The backend refused MAIL for good.
    SenderRefused(Reply),
}

/// What one step of a transaction on one backend came to.
enum Step {
    /// The backend answered (any reply the client should see).
    Reply(Reply),
    /// The backend failed: try another.
    Failed,
}

impl RelayState {
    /// Sends one command on `lease`; a failure (no reply, 421) is reported to the pool.
    async fn step(shared: &RelayShared, lease: &mut Lease, cmd: &Command) -> Step {
        let what = cmd.verb();
        match lease
            .conn()
            .command(cmd, shared.config.command_timeout, what)
            .await
        {
            Ok(reply) if reply.code() == 421 => {
                lease.failure(FailureKind::ServiceUnavailable);
                tracing::warn!(backend = %lease.addr(), %reply, "backend closing (421)");
                Step::Failed
            }
            Ok(reply) => Step::Reply(reply),
            Err(error) => {
                lease.failure(FailureKind::from(&error));
                tracing::warn!(backend = %lease.addr(), %error, during = what, "backend failed");
                Step::Failed
            }
        }
    }

    /// Opens the transaction on a backend of pool `pool`: the one chosen at MAIL (or the
    /// session's pinned one), else one from the pool. MAIL, the recipients accepted so far (a
    /// replay) and `then` (the RCPT or DATA at hand) go in one write when the backend offers
    /// PIPELINING. A backend that fails before DATA (no connection, timeout, 421, 4xx to MAIL,
    /// a replayed recipient refused) is left for the next, up to `failover_attempts` of them;
    /// the client notices nothing.
    ///
    /// Returns the reply to `then` for the client, or `Opened::SenderRefused` with the
    /// backend's permanent refusal of MAIL (the client's MAIL was answered at once, so that is
    /// the answer to its recipients, as Postfix itself does with `smtpd_delay_reject`); `Err`
    /// when no backend could take the transaction.
    pub(super) async fn open(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        pool: usize,
        then: &Command,
    ) -> Result<Opened, Reply> {
        let attempts = 1 + shared.pools[pool].config().failover_attempts as usize;
        let mut stale_retry = true;
        let mut last_refusal: Option<Reply> = None;
        loop {
            let txn = self.txn.as_mut().expect("a transaction is open");
            if txn.tried.len() >= attempts {
                return Err(last_refusal
                    .map(soften_421)
                    .unwrap_or_else(|| unavailable(&CheckoutError::NoBackend)));
            }
            let needs = txn.needs.union(match then {
                Command::Rcpt(rcpt) => rcpt.needs(),
                _ => Extensions::EMPTY,
            });
            let held = self.lease.take().map(|mut held| {
                held.resume();
                held
            });
            let held = match held {
                // A pinned connection of another pool (the session's earlier transaction went
                // elsewhere): this transaction leaves it.
                Some(held) if self.lease_pool != pool && !self.authenticated => {
                    held.quit();
                    None
                }
                // The backend chosen at MAIL (or the session's own) lacks what a recipient
                // needs: another one, unless the connection is the session's.
                Some(held) if !held.caps().extensions.contains_all(needs) => {
                    if self.authenticated || !held.poolable() {
                        self.lease = Some(held);
                        return Err(replies::no_backend_offers(needs));
                    }
                    held.release();
                    None
                }
                held => held,
            };
            let mut lease = match held {
                Some(held) => held,
                None if self.authenticated => return Err(replies::auth_lost()),
                None => match checkout(shared, pool, identity, &mut txn.tried, needs).await {
                    Ok(lease) => {
                        self.lease_pool = pool;
                        lease
                    }
                    Err(reply) => return Err(last_refusal.map(soften_421).unwrap_or(reply)),
                },
            };
            let caps = lease.conn().caps();
            let relayed = relayed_mail(&txn.mail, &caps, identity.login.is_some());
            let mut cmds = Vec::with_capacity(txn.rcpts.len() + 2);
            cmds.push(Command::Mail(relayed));
            cmds.extend(txn.rcpts.iter().cloned().map(Command::Rcpt));
            cmds.push(then.clone());
            let reused = lease.reused();
            let xforward = lease.xforward(identity, &txn.ident);
            let replies = match lease
                .conn()
                .pipeline_after(&xforward, &cmds, shared.config.command_timeout)
                .await
            {
                Ok(replies) => replies,
                Err(error) if reused && stale_retry => {
                    // A pooled connection the backend closed meanwhile: once, silently.
                    tracing::debug!(backend = %lease.addr(), %error, "pooled backend connection is gone; another");
                    stale_retry = false;
                    continue;
                }
                Err(error) => {
                    lease.failure(FailureKind::from(&error));
                    tracing::warn!(backend = %lease.addr(), %error, "backend failed at MAIL; trying another");
                    Self::failed_over(shared, txn, &lease);
                    continue;
                }
            };
            let (mail, rest) = replies.split_first().expect("one reply per command");
            let (then_reply, replayed) = rest.split_last().expect("one reply per command");
            if mail.code() == 421 || mail.is_transient() {
                lease.failure(if mail.code() == 421 {
                    FailureKind::ServiceUnavailable
                } else {
                    FailureKind::Transient
                });
                tracing::warn!(backend = %lease.addr(), reply = %mail, "backend refused MAIL for now; trying another");
                Self::failed_over(shared, txn, &lease);
                last_refusal = Some(mail.clone());
                continue;
            }
            if !mail.is_positive() {
                if !txn.rcpts.is_empty() {
                    // A replay the next backend refuses for good: it cannot take over.
                    Self::failed_over(shared, txn, &lease);
                    continue;
                }
                // The backend has no transaction open: the connection is clean.
                self.lease = Some(lease);
                return Ok(Opened::SenderRefused(mail.clone()));
            }
            if replayed.iter().any(|r| !r.is_positive()) {
                Self::failed_over(shared, txn, &lease);
                continue;
            }
            if then_reply.code() == 421 {
                lease.failure(FailureKind::ServiceUnavailable);
                Self::failed_over(shared, txn, &lease);
                last_refusal = Some(then_reply.clone());
                continue;
            }
            lease.success();
            self.lease = Some(lease);
            return Ok(Opened::Reply(then_reply.clone()));
        }
    }

    pub(super) fn failed_over(shared: &RelayShared, txn: &mut Txn, lease: &Lease) {
        txn.tried.push(lease.addr());
        lease.failed_over();
        shared.metrics.failovers.increment(1);
    }

    /// MAIL: with one pool, chooses the backend now (so a client hears "no backend" at once);
    /// with routes, the first recipient chooses the pool, and MAIL only checks that some pool
    /// has a backend up. Answers 250 and sends nothing yet: MAIL goes to the backend with the
    /// first RCPT, in one write.
    pub(super) async fn mail(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        mail: MailFrom,
        ident: String,
    ) -> Reply {
        if self.auth_lost {
            return replies::auth_lost();
        }
        let mut tried = Vec::new();
        let needs = mail.needs();
        if self.lease.is_none() && shared.router.is_none() {
            match checkout(shared, 0, identity, &mut tried, needs).await {
                Ok(lease) => {
                    self.lease = Some(lease);
                    self.lease_pool = 0;
                }
                Err(reply) => return reply,
            }
        } else if self.lease.is_none() && !shared.pools.iter().any(|p| p.available()) {
            shared.metrics.unavailable.increment(1);
            return replies::no_backend();
        }
        if let Some(lease) = self.lease.as_mut() {
            lease.resume();
        }
        self.txn = Some(Box::new(Txn {
            mail,
            rcpts: Vec::new(),
            needs,
            ident,
            trace: None,
            tried,
            pool: None,
            size_limit: None,
        }));
        self.phase = Phase::MailLocal;
        replies::sender_ok()
    }

    /// The first RCPT (on pool `pool`): MAIL and this RCPT go to the backend together.
    pub(super) async fn first_rcpt(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        rcpt: RcptTo,
        pool: usize,
    ) -> Reply {
        match self
            .open(shared, identity, pool, &Command::Rcpt(rcpt.clone()))
            .await
        {
            Ok(Opened::Reply(reply)) => {
                self.phase = Phase::Mail;
                if reply.is_positive()
                    && let Some(txn) = self.txn.as_mut()
                {
                    txn.needs = txn.needs.union(rcpt.needs());
                    txn.rcpts.push(rcpt);
                }
                reply
            }
            Ok(Opened::SenderRefused(reply)) => {
                self.phase = Phase::SenderRefused;
                self.refusal = Some(reply.clone());
                reply
            }
            Err(reply) => {
                shared.metrics.failures.increment(1);
                if shared.router.is_some() && self.lease.is_none() {
                    // Routed, and nothing open on any backend: the next recipient (another
                    // pool's, perhaps) opens the transaction afresh.
                    if let Some(txn) = self.txn.as_mut() {
                        txn.tried.clear();
                    }
                    self.phase = Phase::MailLocal;
                } else {
                    self.phase = Phase::Broken;
                }
                reply
            }
        }
    }

    /// RCPT or DATA within a transaction: on the current backend, or, if it fails, replayed
    /// on another.
    pub(super) async fn in_transaction(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        cmd: Command,
    ) -> Reply {
        if let Command::Rcpt(rcpt) = &cmd
            && let Some(lease) = self.lease.as_mut()
            && !lease.caps().extensions.contains_all(rcpt.needs())
        {
            // The backend of this transaction does not offer what this recipient needs (the
            // backends changed since the client was offered it).
            return replies::no_backend_offers(rcpt.needs());
        }
        if matches!(cmd, Command::Data) {
            // The client gets 354 at once and starts sending while the backend's 354 is on its
            // way: one backend round trip less per message. The backend's answer is read before
            // the first content goes out; if it is not 354, the transaction fails over (nothing
            // was sent yet) or the refusal becomes the reply to end of data.
            let lease = self.lease.as_mut().expect("a lease in the Mail phase");
            if lease
                .conn()
                .send(&Command::Data, shared.config.command_timeout, "DATA")
                .await
                .is_ok()
            {
                self.phase = Phase::DataPending;
                return replies::start_data();
            }
        }
        let mut lease = self.lease.take().expect("a lease in the Mail phase");
        let reply = match Self::step(shared, &mut lease, &cmd).await {
            Step::Reply(reply) => {
                self.lease = Some(lease);
                reply
            }
            Step::Failed => {
                let txn = self.txn.as_mut().expect("a transaction in the Mail phase");
                Self::failed_over(shared, txn, &lease);
                drop(lease);
                if self.authenticated {
                    self.auth_lost = true;
                    self.phase = Phase::Broken;
                    return replies::backend_lost("earlier in this transaction");
                }
                let pool = txn.pool.unwrap_or(self.lease_pool);
                match self.open(shared, identity, pool, &cmd).await {
                    Ok(Opened::Reply(reply)) => reply,
                    Ok(Opened::SenderRefused(_)) | Err(_) => {
                        shared.metrics.failures.increment(1);
                        self.phase = Phase::Broken;
                        return replies::backend_lost(if matches!(cmd, Command::Data) {
                            "at DATA"
                        } else {
                            "at RCPT"
                        });
                    }
                }
            }
        };
        match cmd {
            Command::Rcpt(rcpt) if reply.is_positive() => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.needs = txn.needs.union(rcpt.needs());
                    txn.rcpts.push(rcpt);
                }
            }
            Command::Data if reply.code() == 354 => {
                self.phase = Phase::Data {
                    at_line_start: true,
                };
            }
            _ => {}
        }
        reply
    }
}
