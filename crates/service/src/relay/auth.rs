//! AUTH relayed to a backend: the exchange goes through line by line, and an authenticated
//! backend connection is the session's own from then on (never pooled).

use attitude_balance::{ClientIdentity, FailureKind};
use attitude_codec::Reply;

use super::RelayShared;
use super::state::{Phase, RelayState};
use crate::replies;
use crate::request::Event;

impl RelayState {
    /// AUTH, or an answer in the exchange: relayed, and the backend's reply handed back. An
    /// authenticated backend connection is the session's own from then on.
    pub(super) async fn auth(
        &mut self,
        shared: &RelayShared,
        identity: &ClientIdentity,
        event: Event,
    ) -> Reply {
        if matches!(event, Event::Command(_)) {
            self.reset(shared).await;
            if self.lease.is_none() {
                match shared.pools[0].checkout(identity, &[]).await {
                    Ok(lease) => self.lease = Some(lease),
                    Err(error) => {
                        tracing::warn!(%error, "no backend for AUTH");
                        return replies::temporary_auth_failure();
                    }
                }
            }
        }
        let limit = shared.config.command_timeout;
        let mut lease = self
            .lease
            .take()
            .expect("connected above or in the exchange");
        lease.resume();
        let result = match &event {
            Event::Command(cmd) => lease.conn().command(cmd, limit, "AUTH").await,
            Event::AuthLine(line) => lease.conn().raw(line, limit, "AUTH answer").await,
            _ => unreachable!("only AUTH events"),
        };
        match result {
            Ok(reply) if reply.code() == 334 => {
                self.phase = Phase::Auth;
                self.lease = Some(lease);
                reply
            }
            Ok(reply) if reply.code() == 421 => {
                self.phase = Phase::Idle;
                lease.failure(FailureKind::ServiceUnavailable);
                replies::temporary_auth_failure()
            }
            Ok(reply) => {
                self.phase = Phase::Idle;
                if reply.code() == 235 {
                    lease.pin();
                    self.authenticated = true;
                }
                self.put_back(lease);
                reply
            }
            Err(error) => {
                self.lease = Some(lease);
                self.fail(shared, &error, "during AUTH");
                self.phase = Phase::Idle;
                replies::temporary_auth_failure()
            }
        }
    }
}
