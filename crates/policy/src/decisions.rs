//! `attitude_policy_decisions_total{policy,action}`.

use metrics::Counter;

/// One policy's decision counters.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// Let through.
    pub allow: Counter,
    /// Refused for good (5xx).
    pub reject: Counter,
    /// Refused for now (4xx).
    pub defer: Counter,
    /// What a dry-run policy would have refused (5xx).
    pub would_reject: Counter,
    /// What a dry-run policy would have deferred (4xx).
    pub would_defer: Counter,
}

impl Decisions {
    /// Registers the counters of `policy` with the installed `metrics` recorder.
    pub fn register(policy: &'static str) -> Self {
        let action = |a: &'static str| metrics::counter!("attitude_policy_decisions_total", "policy" => policy, "action" => a);
        Self {
            allow: action("allow"),
            reject: action("reject"),
            defer: action("defer"),
            would_reject: action("would_reject"),
            would_defer: action("would_defer"),
        }
    }

    /// Counters that count nothing.
    pub fn noop() -> Self {
        Self {
            allow: Counter::noop(),
            reject: Counter::noop(),
            defer: Counter::noop(),
            would_reject: Counter::noop(),
            would_defer: Counter::noop(),
        }
    }

    /// Counts a refusal with `code` (4xx defers, 5xx rejects), enforced or not.
    pub fn refused(&self, code: u16, enforced: bool) {
        match (code >= 500, enforced) {
            (true, true) => self.reject.increment(1),
            (false, true) => self.defer.increment(1),
            (true, false) => self.would_reject.increment(1),
            (false, false) => self.would_defer.increment(1),
        }
    }
}
