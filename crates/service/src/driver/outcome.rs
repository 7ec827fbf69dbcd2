//! What the driver reports: how a session ended ([`SessionResult`]), what it did
//! ([`SessionSummary`]), the session metrics, and the two stages of a shutdown.

use std::sync::Arc;
use std::time::Duration;

use attitude_edge::TlsInfo;
use metrics::{Counter, Gauge};
use tokio_util::sync::CancellationToken;

/// Session-level metric handles.
#[derive(Debug)]
pub struct DriverMetrics {
    pub(super) active: Gauge,
    pub(super) total: Counter,
    pub(super) bytes_in: Counter,
    pub(super) bytes_out: Counter,
    ended: [Counter; 9],
    pub(super) starttls_injection: Counter,
}

impl DriverMetrics {
    /// Registers the handles with the installed `metrics` recorder.
    pub fn register() -> Arc<Self> {
        Arc::new(Self {
            active: metrics::gauge!("attitude_sessions_active"),
            total: metrics::counter!("attitude_sessions_total"),
            bytes_in: metrics::counter!("attitude_client_bytes_received_total"),
            bytes_out: metrics::counter!("attitude_client_bytes_sent_total"),
            ended: SessionResult::ALL.map(
                |r| metrics::counter!("attitude_sessions_ended_total", "result" => r.as_str()),
            ),
            starttls_injection: metrics::counter!("attitude_starttls_injection_total"),
        })
    }

    /// Counts a session that is now encrypted, by what it negotiated.
    pub fn record_tls(&self, tls: &TlsInfo) {
        metrics::counter!("attitude_tls_sessions_total", "version" => tls.version, "cipher" => tls.cipher)
            .increment(1);
    }
}

impl DriverMetrics {
    /// Counts a session the connection stack refused before it began.
    pub fn record_refused(&self) {
        self.record_unstarted(SessionResult::Refused);
    }

    /// Counts a session that ended before its greeting (refused, or a failed implicit-TLS
    /// handshake).
    pub fn record_unstarted(&self, result: SessionResult) {
        self.total.increment(1);
        self.record_end(result);
    }

    pub(super) fn record_end(&self, result: SessionResult) {
        // `ended` is built from `SessionResult::ALL`, which lists the variants in order.
        self.ended[result as usize].increment(1);
    }
}

/// The two stages of a shutdown: `drain` closes sessions that are between transactions,
/// `hard` closes every session (with 421 4.3.2). `drain` is a child of `hard`: a hard shutdown
/// drains too, so a waiting session watches one token, not two.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Stop taking new transactions.
    pub drain: CancellationToken,
    /// Close now.
    pub hard: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        let hard = CancellationToken::new();
        Self {
            drain: hard.child_token(),
            hard,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection without QUIT.
    ClientClosed,
    /// A timeout (command, DATA, minimum data rate, write).
    Timeout,
    /// Too many errors.
    TooManyErrors,
    /// Too many commands that move no transaction forward (NOOP, RSET, HELP, VRFY, EXPN, a
    /// repeated HELO/EHLO).
    JunkCommands,
    /// attitude is shutting down.
    Shutdown,
    /// A socket error.
    IoError,
    /// Refused before the session began (connection stack).
    Refused,
    /// A layer answered 421 (e.g. the tarpit budget): the session is closed after it.
    Policy,
}

impl SessionResult {
    const ALL: [SessionResult; 9] = [
        SessionResult::Quit,
        SessionResult::ClientClosed,
        SessionResult::Timeout,
        SessionResult::TooManyErrors,
        SessionResult::JunkCommands,
        SessionResult::Shutdown,
        SessionResult::IoError,
        SessionResult::Refused,
        SessionResult::Policy,
    ];

    /// A label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionResult::Quit => "quit",
            SessionResult::ClientClosed => "client_closed",
            SessionResult::Timeout => "timeout",
            SessionResult::TooManyErrors => "too_many_errors",
            SessionResult::JunkCommands => "junk_commands",
            SessionResult::Shutdown => "shutdown",
            SessionResult::IoError => "io_error",
            SessionResult::Refused => "refused",
            SessionResult::Policy => "policy",
        }
    }
}

/// What a finished session did.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// How it ended.
    pub result: SessionResult,
    /// Messages accepted by a backend.
    pub messages: u32,
    /// Octets read from the client.
    pub bytes_in: u64,
    /// Octets written to the client.
    pub bytes_out: u64,
    /// HELO/EHLO name.
    pub helo: Option<String>,
    /// Duration of the session.
    pub duration: Duration,
}

impl SessionSummary {
    /// A session that ended before it began: refused, or lost before the greeting.
    pub fn unstarted(result: SessionResult, bytes_out: u64) -> Self {
        Self {
            result,
            messages: 0,
            bytes_in: 0,
            bytes_out,
            helo: None,
            duration: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SessionResult;

    #[test]
    fn results_are_listed_in_declaration_order() {
        // The ended-session counters are indexed by `result as usize`.
        for (i, result) in SessionResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i, "{}", result.as_str());
        }
    }
}
