//! DATA: the backend's 354 read before content goes out, content streamed chunk by chunk
//! (re-dot-stuffed), and the backend's own reply to end of data.

use attitude_balance::{BackendError, ClientIdentity, FailureKind, Lease};
use attitude_codec::{Command, Extension, Reply};
use bytes::Bytes;

use super::RelayShared;
use super::open::Opened;
use super::state::{Phase, RelayState, soften_421};
use crate::replies;

impl RelayState {
    /// Reads the backend's answer to DATA (sent early, see `in_transaction`): 354 moves on to
    /// content; a failure fails over (no content was sent yet); any other reply refuses the
    /// message at end of data.
    pub(super) async fn confirm_data(&mut self, shared: &RelayShared, identity: &ClientIdentity) {
        let mut lease = self.lease.take().expect("a lease in the DataPending phase");
        let answer = match lease
            .conn()
            .reply(shared.config.command_timeout, "DATA")
            .await
        {
            Ok(reply) if reply.code() == 421 => {
                lease.failure(FailureKind::ServiceUnavailable);
                None
            }
            Ok(reply) => Some(reply),
            Err(error) => {
                lease.failure(FailureKind::from(&error));
                tracing::warn!(backend = %lease.addr(), %error, during = "DATA", "backend failed");
                None
            }
        };
        let answer = match answer {
            Some(reply) => {
                self.lease = Some(lease);
                Ok(reply)
            }
            None if self.authenticated => {
                self.auth_lost = true;
                Err(())
            }
            None => {
                let txn = self
                    .txn
                    .as_mut()
                    .expect("a transaction in the DataPending phase");
                Self::failed_over(shared, txn, &lease);
                drop(lease);
                let pool = txn.pool.unwrap_or(self.lease_pool);
                match self.open(shared, identity, pool, &Command::Data).await {
                    Ok(Opened::Reply(reply)) => Ok(reply),
                    Ok(Opened::SenderRefused(_)) | Err(_) => Err(()),
                }
            }
        };
        match answer {
            Ok(reply) if reply.code() == 354 => {
                self.phase = Phase::Data {
                    at_line_start: true,
                }
            }
            Ok(reply) => {
                self.phase = Phase::Refused;
                self.refusal = Some(reply);
            }
            Err(()) => {
                shared.metrics.failures.increment(1);
                self.phase = Phase::Broken;
            }
        }
    }

    /// A chunk of content, written to the backend (dot-stuffed, canonical line endings).
    pub(super) async fn chunk(
        &mut self,
        shared: &RelayShared,
        chunk: &Bytes,
        mut at_line_start: bool,
    ) -> Reply {
        let trace = self.txn.as_mut().and_then(|t| t.trace.take());
        let lease = self.lease.as_mut().expect("connected in Data phase");
        let limit = shared.config.data_block_timeout;
        let mut sent = Ok(());
        if let Some(trace) = trace {
            sent = lease
                .conn()
                .send_content(trace.as_bytes(), &mut at_line_start, limit)
                .await;
        }
        if sent.is_ok() {
            sent = lease
                .conn()
                .send_content(chunk, &mut at_line_start, limit)
                .await;
        }
        match sent {
            Ok(()) => {
                self.phase = Phase::Data { at_line_start };
                replies::ok()
            }
            Err(error) => self.fail(shared, &error, "during DATA"),
        }
    }

    /// The final dot: the backend's own reply is the client's (attitude never says 250 for a
    /// message itself); a 421 becomes a 451, a lost backend a 451.
    pub(super) async fn end_of_data(
        &mut self,
        shared: &RelayShared,
        mut at_line_start: bool,
    ) -> Reply {
        if self.txn.as_ref().is_some_and(|t| t.trace.is_some()) {
            // An empty message: the trace is all of it.
            let reply = self.chunk(shared, &Bytes::new(), at_line_start).await;
            let Phase::Data { at_line_start: now } = self.phase else {
                self.txn = None;
                self.phase = Phase::Idle;
                return reply;
            };
            at_line_start = now;
        }
        let mut lease = self.lease.take().expect("connected in Data phase");
        self.txn = None;
        self.phase = Phase::Idle;
        let verdict = lease
            .conn()
            .finish_data(at_line_start, shared.config.data_end_timeout)
            .await;
        self.verdict(shared, lease, verdict)
    }

    /// The backend's verdict on a message (after its final dot or `BDAT ... LAST`) as the
    /// client's reply: a 421 becomes a 451, a lost backend a 451; a connection that gave a
    /// verdict goes back to the pool.
    fn verdict(
        &mut self,
        shared: &RelayShared,
        mut lease: Lease,
        verdict: Result<Reply, BackendError>,
    ) -> Reply {
        match verdict {
            Ok(reply) if reply.code() == 421 => {
                lease.failure(FailureKind::ServiceUnavailable);
                soften_421(reply)
            }
            Ok(reply) => {
                if reply.is_transient() {
                    lease.failure(FailureKind::Transient);
                }
                lease.transaction_done();
                self.put_back(lease);
                reply
            }
            Err(error) => {
                self.lease = Some(lease);
                let reply = self.fail(shared, &error, "at end of data");
                self.phase = Phase::Idle;
                reply
            }
        }
    }
}

impl RelayState {
    /// The first BDAT of a transaction: to a backend that offers CHUNKING the chunks go on as
    /// BDAT; to one that does not, as DATA (dot-stuffed; never BINARYMIME, which only goes to a
    /// backend with CHUNKING). The reply is not written: a chunk's reply comes once it is read.
    pub(super) async fn first_chunk(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
    ) -> Reply {
        let chunking = self
            .lease
            .as_ref()
            .is_some_and(|l| l.caps().offers(Extension::Chunking));
        if chunking {
            self.phase = Phase::Chunks;
            return replies::ok();
        }
        let reply = self.in_transaction(shared, identity, Command::Data).await;
        if reply.code() == 354 {
            replies::ok()
        } else {
            reply
        }
    }

    /// Content of a BDAT message, as a BDAT chunk to the backend.
    pub(super) async fn send_chunk(&mut self, shared: &RelayShared, chunk: &Bytes) -> Reply {
        let trace = self.txn.as_mut().and_then(|t| t.trace.take());
        let lease = self.lease.as_mut().expect("connected in Chunks phase");
        let limit = shared.config.data_block_timeout;
        let mut sent = Ok(());
        if let Some(trace) = trace {
            sent = lease.conn().send_chunk(trace.as_bytes(), limit).await;
        }
        if sent.is_ok() && !chunk.is_empty() {
            sent = lease.conn().send_chunk(chunk, limit).await;
        }
        match sent {
            Ok(()) => replies::ok(),
            Err(BackendError::Refused(reply)) => {
                // A backend without PIPELINING refused a chunk: that is the verdict.
                self.phase = Phase::Refused;
                self.refusal = Some(reply);
                replies::ok()
            }
            Err(error) => self.fail(shared, &error, "during BDAT"),
        }
    }

    /// `BDAT ... LAST`: the backend's verdict, as for end of data.
    pub(super) async fn end_of_chunks(&mut self, shared: &RelayShared) -> Reply {
        if self.txn.as_ref().is_some_and(|t| t.trace.is_some()) {
            // An empty message: the trace is all of it.
            let reply = self.send_chunk(shared, &Bytes::new()).await;
            match self.phase {
                Phase::Chunks => {}
                Phase::Refused => {
                    let refusal = self.refusal.take();
                    self.reset(shared).await;
                    return refusal.unwrap_or(reply);
                }
                _ => {
                    self.txn = None;
                    self.phase = Phase::Idle;
                    return reply;
                }
            }
        }
        let mut lease = self.lease.take().expect("connected in Chunks phase");
        self.txn = None;
        self.phase = Phase::Idle;
        let verdict = lease
            .conn()
            .finish_bdat(shared.config.data_end_timeout)
            .await;
        self.verdict(shared, lease, verdict)
    }
}
