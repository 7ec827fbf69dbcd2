//! Routes: which pool of backends a recipient's mail goes to. The first accepted recipient
//! fixes the transaction's pool; a recipient routed elsewhere gets `452 4.5.3` (the client
//! sends it in another transaction), so a message is never split over pools or queued.
//!
//! The matching itself (domains, files, regular expressions) is the binary's: the relay asks a
//! [`Router`].

use attitude_codec::{RcptTo, Reply};

use super::RelayShared;
use super::state::{Phase, RelayState};
use crate::replies;

/// Where a recipient's mail goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the relay's pool at this index (0: the default pool), with the route's own message
    /// size limit, if it has one.
    Pool {
        /// Index into the relay's pools.
        pool: usize,
        /// The route's message size limit (octets), below the session's.
        max_message_size: Option<u64>,
    },
    /// No route, and unrouted domains are refused (`550 5.1.2`).
    Unknown,
}

/// Chooses a recipient's route.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// The route of `rcpt`.
    fn route(&self, rcpt: &RcptTo) -> Route;
}

/// The pool and size limit a recipient was routed to.
#[derive(Debug, Clone, Copy)]
struct Target {
    pool: usize,
    max_message_size: Option<u64>,
}

impl RelayState {
    /// The recipient's target: the router's, or, for a session authenticated on its backend
    /// connection, that connection's pool (the backend that authenticated the client routes
    /// its mail itself).
    fn target(&self, shared: &RelayShared, rcpt: &RcptTo) -> Result<Target, Reply> {
        let Some(router) = shared.router.as_ref().filter(|_| !self.authenticated) else {
            return Ok(Target {
                pool: self.lease_pool,
                max_message_size: None,
            });
        };
        match router.route(rcpt) {
            Route::Pool {
                pool,
                max_message_size,
            } => Ok(Target {
                pool,
                max_message_size,
            }),
            Route::Unknown => {
                shared.metrics.unrouted.increment(1);
                Err(replies::unknown_domain())
            }
        }
    }

    /// RCPT: routed, then sent to the transaction's backend (the first recipient opens the
    /// transaction on its pool).
    pub(super) async fn rcpt(
        &mut self,
        shared: &RelayShared,
        identity: &attitude_balance::ClientIdentity,
        rcpt: RcptTo,
    ) -> Reply {
        let target = match self.target(shared, &rcpt) {
            Ok(target) => target,
            Err(reply) => return reply,
        };
        let txn = self.txn.as_mut().expect("a transaction is open");
        if let (Some(limit), Some(size)) = (target.max_message_size, txn.mail.size)
            && size.get() > limit
        {
            return replies::too_big(limit);
        }
        let reply = if self.phase == Phase::Mail {
            match txn.pool {
                Some(pool) if pool != target.pool => {
                    shared.metrics.deferred.increment(1);
                    return replies::other_route();
                }
                // MAIL is open on a backend of another pool, with no recipient accepted yet:
                // that backend's transaction ends, and this recipient opens one on its pool.
                None if target.pool != self.lease_pool => {
                    self.leave_pool(shared).await;
                    self.first_rcpt(shared, identity, rcpt, target.pool).await
                }
                _ => {
                    self.in_transaction(shared, identity, attitude_codec::Command::Rcpt(rcpt))
                        .await
                }
            }
        } else {
            self.first_rcpt(shared, identity, rcpt, target.pool).await
        };
        if reply.is_positive()
            && let Some(txn) = self.txn.as_mut()
            && txn.pool.is_none()
        {
            txn.pool = Some(target.pool);
            txn.size_limit = target.max_message_size;
        }
        reply
    }

    /// Ends the backend's side of a transaction that has no recipient yet (RSET; a connection
    /// that does not take it is closed), keeping the client's: MAIL is sent again with the next
    /// recipient, on another pool.
    async fn leave_pool(&mut self, shared: &RelayShared) {
        self.phase = Phase::MailLocal;
        if let Some(txn) = self.txn.as_mut() {
            txn.tried.clear();
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.rset(shared, lease).await;
        if let Some(lease) = self.lease.take() {
            // A pinned connection of the other pool: this session leaves it.
            lease.quit();
        }
    }

    /// A DATA or BDAT chunk past the route's size limit (the driver counted the octets): the
    /// refusal that fails the message.
    pub(super) fn over_route_limit(&self, data_bytes: u64) -> Option<Reply> {
        let limit = self.txn.as_ref()?.size_limit?;
        (data_bytes > limit).then(|| replies::too_big(limit))
    }
}
