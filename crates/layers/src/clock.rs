//! governor's clock on tokio's time, for the layers that sleep with tokio: the instants are
//! `std::time::Instant`s read through `tokio::time::Instant::now()`, so a paused tokio clock
//! (tests under `start_paused`) moves the budget and the sleeps together. Outside tests it is
//! the monotonic clock.

use governor::clock::{Clock, ReasonablyRealtime};

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl ReasonablyRealtime for TokioClock {}
