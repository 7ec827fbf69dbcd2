//! `[state]`: where the fleet's shared memory is (Redis), and how attitude uses it. Without
//! `redis`, every replica remembers alone (the process scope of `docs/design.md`).

use std::path::PathBuf;
use std::time::Duration;

use attitude_policy::greylist::OnStoreError;
use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[state]`: see the module docs. A process-wide section (a listener's policy cannot set it,
/// and a reload does not change it: restart to point at another Redis).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct State {
    /// `redis://host:port/db` or `rediss://host:port/db` (TLS); none: state in the process.
    pub redis: Option<String>,
    /// The ACL user (when not in the URL).
    pub username: Option<String>,
    /// A file holding the password (a Kubernetes Secret's mount), trailing newline ignored.
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Sentinels (`host:port`) that name the master `master_name`; `redis` then gives the
    /// scheme, database and credentials used with it.
    pub sentinels: Vec<String>,
    /// The master's name for the sentinels.
    pub master_name: String,
    /// The CA certificate (PEM) that signed Redis's, for `rediss://` with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Every key starts with this (several fleets or environments in one Redis).
    pub key_prefix: String,
    /// A command not answered in this long fails, and the caller falls back to its local state.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Connecting gives up after this long.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Failures in a row that open the circuit breaker (Redis is then not asked for
    /// `breaker_open`, and every feature runs degraded at no wait).
    pub breaker_failures: u32,
    /// How long the circuit stays open before one probe.
    #[serde(with = "duration")]
    pub breaker_open: Duration,
    /// A session's lease on a per-client concurrency slot expires this long after its replica
    /// stops renewing it (renewed three times per period): a dead replica's sessions stop
    /// counting within it.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// A client Redis refused (over a limit) is refused locally for this long, with no round
    /// trip (rates: until the next allowance Redis named).
    #[serde(with = "duration")]
    pub refusal_memory: Duration,
    /// Greylisting when Redis does not answer: `accept` (fail open) or `local` (this replica's
    /// own store).
    pub greylist_on_error: OnStoreError,
}

impl Default for State {
    fn default() -> Self {
        Self {
            redis: None,
            username: None,
            password_file: None,
            password_env: None,
            sentinels: Vec::new(),
            master_name: "mymaster".into(),
            ca_file: None,
            key_prefix: "attitude:".into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            breaker_failures: 3,
            breaker_open: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(30),
            refusal_memory: Duration::from_secs(1),
            greylist_on_error: OnStoreError::Accept,
        }
    }
}

impl State {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[state] {m}")));
        let Some(url) = &self.redis else {
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return invalid("redis must be a redis:// or rediss:// URL");
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return invalid("set password_file or password_env, not both");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            return invalid("timeout must be between 1ms and 5s (a session waits for it)");
        }
        if self.breaker_failures == 0 {
            return invalid("breaker_failures must be at least 1");
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return invalid("lease_ttl must be at least 1s");
        }
        if self.key_prefix.contains(['{', '}']) {
            return invalid("key_prefix must not contain braces (they are the keys' hash tags)");
        }
        Ok(())
    }

    /// The password from `password_file` or `password_env`, if either is set.
    pub(crate) fn password(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("[state] password_file {}: {e}", path.display()))?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(name) = &self.password_env {
            return std::env::var(name)
                .map(Some)
                .map_err(|_| format!("[state] password_env: the environment has no {name}"));
        }
        Ok(None)
    }
}
