//! What the pool is told: time limits, connection reuse, health checks, outlier detection.

use std::time::Duration;

/// The pool's settings (the binary maps `[backend]` onto these).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The pool's name (the `pool` label of its metrics; `default` for `[backend]`).
    pub name: String,
    /// Name attitude gives in its EHLO to backends.
    pub helo_name: String,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Limit for the greeting, EHLO and XCLIENT replies.
    pub greeting_timeout: Duration,
    /// Limit for the reply to QUIT (sent in the background).
    pub quit_timeout: Duration,
    /// Open connections per backend (0: no limit).
    pub max_connections: usize,
    /// How long a transaction waits for a connection slot when every backend is at its limit.
    pub queue_timeout: Duration,
    /// Whether connections go back to a pool after a transaction.
    pub reuse: bool,
    /// Idle connections kept per backend.
    pub max_idle: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// A connection is closed after this long, busy or not (at the end of a transaction).
    pub max_age: Duration,
    /// A connection is closed after this many transactions.
    pub max_transactions: u32,
    /// Other backends tried when the chosen one fails before DATA.
    pub failover_attempts: u32,
    /// Active health checks.
    pub health: HealthConfig,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// TLS to the backends (`None`: in the clear).
    pub tls: Option<BackendTls>,
}

/// TLS towards backends.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// TLS from the first byte (else STARTTLS after EHLO).
    pub implicit: bool,
    /// Verification settings.
    pub client: attitude_edge::tls::ClientTls,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            helo_name: "localhost".into(),
            connect_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(60),
            quit_timeout: Duration::from_secs(5),
            max_connections: 0,
            queue_timeout: Duration::from_secs(10),
            reuse: true,
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            max_transactions: 1000,
            failover_attempts: 2,
            health: HealthConfig::default(),
            outlier: OutlierConfig::default(),
            tls: None,
        }
    }
}

/// SMTP health checks: connect, 220 greeting, EHLO, QUIT.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Off: every backend counts as up.
    pub enabled: bool,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Limit for one whole check.
    pub timeout: Duration,
    /// Passed checks in a row that bring a down backend up.
    pub rise: u32,
    /// Failed checks in a row that take an up backend down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            rise: 2,
            fall: 3,
        }
    }
}

/// Ejection of a backend whose transactions keep failing (a circuit breaker).
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend (0: never).
    pub consecutive_failures: u32,
    /// First ejection; each ejection in a row doubles it.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// At most this share of the backends is ejected at once (percent).
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}
