//! `[backend]`: the pool of backend mail servers, and its translation into the pool's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use attitude_balance::{
    BackendSpec, DnsSource, HealthConfig, IdentityMode, OutlierConfig, PoolConfig,
};
use attitude_edge::tls::{ClientTls, Verify};
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, duration};

/// The CA bundle of Debian and its children (package ca-certificates).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `[backend]`: the pool of backend mail servers (see docs/operations.md, "Backends").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Backend {
    /// Static backends: `"host:port"` or `{ address = "host:port", weight = 2, identity = "xclient" }`.
    pub servers: Vec<Server>,
    /// DNS names whose addresses are backends (`[[backend.dns]]`), re-resolved on an interval.
    pub dns: Vec<DnsBackend>,
    /// How backends learn the real client: `"none"`, `"xclient"`, `"xforward"` (Postfix's
    /// content-filter interface) or `"proxy"` (PROXY v2).
    pub identity: IdentityMode,
    /// Name for attitude's EHLO to backends (default: `hostname`).
    pub helo_name: Option<String>,
    /// Open connections per backend (0: no limit).
    pub max_connections: usize,
    /// How long a transaction waits for a connection slot when every backend is at its limit.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Other backends tried when the chosen one fails before DATA.
    pub failover_attempts: u32,
    /// `[backend.pool]`: connection reuse.
    pub pool: BackendPool,
    /// `[backend.health]`: SMTP health checks.
    pub health: BackendHealth,
    /// `[backend.outlier]`: ejection of a backend that keeps failing.
    pub outlier: BackendOutlier,
    /// `[backend.tls]`: TLS to the backends.
    pub tls: BackendTls,
}

impl Default for Backend {
    fn default() -> Self {
        let pool = PoolConfig::default();
        Self {
            servers: Vec::new(),
            dns: Vec::new(),
            identity: IdentityMode::None,
            helo_name: None,
            max_connections: pool.max_connections,
            queue_timeout: pool.queue_timeout,
            failover_attempts: pool.failover_attempts,
            pool: BackendPool::default(),
            health: BackendHealth::default(),
            outlier: BackendOutlier::default(),
            tls: BackendTls::default(),
        }
    }
}

/// A static backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum Server {
    /// `"host:port"`
    Address(SocketAddr),
    /// `{ address = "host:port", weight = 2, identity = "proxy" }`
    Table {
        /// Address.
        address: SocketAddr,
        /// Relative share of transactions.
        #[serde(default = "one")]
        weight: u32,
        /// Overrides `[backend] identity`.
        #[serde(default)]
        identity: Option<IdentityMode>,
    },
}

fn one() -> u32 {
    1
}

impl Server {
    /// The address.
    pub(crate) fn address(&self) -> SocketAddr {
        match self {
            Server::Address(a) | Server::Table { address: a, .. } => *a,
        }
    }
}

/// `[[backend.dns]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsBackend {
    /// The name (a Kubernetes headless Service: `smtp.mail.svc.cluster.local`).
    pub name: String,
    /// `"a"` (A and AAAA records, with `port`) or `"srv"` (SRV records carry port and weight).
    #[serde(default)]
    pub record: DnsRecord,
    /// Port for A/AAAA addresses.
    #[serde(default = "smtp_port")]
    pub port: u16,
    /// Time between lookups.
    #[serde(default = "ten_seconds", with = "duration")]
    pub interval: Duration,
    /// Weight for A/AAAA addresses.
    #[serde(default = "one")]
    pub weight: u32,
    /// Overrides `[backend] identity`.
    #[serde(default)]
    pub identity: Option<IdentityMode>,
}

fn smtp_port() -> u16 {
    25
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Which DNS records name the backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DnsRecord {
    /// A and AAAA.
    #[default]
    A,
    /// SRV.
    Srv,
}

/// How attitude speaks TLS to backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BackendTlsMode {
    /// In the clear.
    #[default]
    None,
    /// STARTTLS after EHLO; a backend that does not offer it is a failure.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `[backend.tls]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendTls {
    /// `"none"`, `"starttls"` or `"implicit"`.
    pub mode: BackendTlsMode,
    /// CA certificates (PEM) that sign the backends' certificates (default: the system's
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<PathBuf>,
    /// The name the backends' certificates carry (default: each backend's IP address).
    pub server_name: Option<String>,
    /// Take any certificate (lab use only: the mail is encrypted, but to whom is not checked).
    pub insecure_skip_verify: bool,
}

/// `[backend.pool]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendPool {
    /// Connections go back to a pool after a transaction (with `identity = "proxy"` a
    /// connection still serves only its own client).
    pub reuse: bool,
    /// Idle connections kept per backend.
    pub max_idle: usize,
    /// An idle connection is closed after this long.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A connection is closed after this long (at the end of a transaction).
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// A connection is closed after this many transactions.
    pub max_transactions: u32,
}

impl Default for BackendPool {
    fn default() -> Self {
        let p = PoolConfig::default();
        Self {
            reuse: p.reuse,
            max_idle: p.max_idle,
            idle_timeout: p.idle_timeout,
            max_age: p.max_age,
            max_transactions: p.max_transactions,
        }
    }
}

/// `[backend.health]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendHealth {
    /// Off: every backend counts as up.
    pub enabled: bool,
    /// Time between checks of one backend.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Limit for one check (connect, greeting, EHLO, QUIT).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Passed checks in a row that bring a down backend back.
    pub rise: u32,
    /// Failed checks in a row that take a backend down.
    pub fall: u32,
}

impl Default for BackendHealth {
    fn default() -> Self {
        let h = HealthConfig::default();
        Self {
            enabled: h.enabled,
            interval: h.interval,
            timeout: h.timeout,
            rise: h.rise,
            fall: h.fall,
        }
    }
}

/// `[backend.outlier]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendOutlier {
    /// Failures in a row (connect errors, timeouts, 421, 4xx to MAIL or end of data) that eject
    /// a backend (0: never).
    pub consecutive_failures: u32,
    /// First ejection; it doubles with each ejection in a row.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// At most this share (percent) of the backends that are up is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for BackendOutlier {
    fn default() -> Self {
        let o = OutlierConfig::default();
        Self {
            consecutive_failures: o.consecutive_failures,
            base_ejection: o.base_ejection,
            max_ejection: o.max_ejection,
            max_ejected_percent: o.max_ejected_percent,
        }
    }
}

impl Config {
    /// The settings of pool `name` (`b`: `[backend]` or one of `[[pools]]`), with the
    /// top-level `[timeouts]` and hostname; fails when its TLS settings do not load.
    pub(crate) fn pool_config(
        &self,
        name: &str,
        b: &Backend,
    ) -> Result<PoolConfig, attitude_edge::tls::TlsError> {
        let t = &self.timeouts;
        let tls = match b.tls.mode {
            BackendTlsMode::None => None,
            mode => {
                let verify = match (&b.tls.ca_file, b.tls.insecure_skip_verify) {
                    (_, true) => Verify::InsecureSkipVerify,
                    (Some(file), false) => Verify::CaFile(file.clone()),
                    (None, false) => Verify::CaFile(SYSTEM_CA_FILE.into()),
                };
                Some(attitude_balance::BackendTls {
                    implicit: mode == BackendTlsMode::Implicit,
                    client: ClientTls::new(&verify, b.tls.server_name.as_deref())?,
                })
            }
        };
        Ok(PoolConfig {
            name: name.to_owned(),
            helo_name: b.helo_name.clone().unwrap_or_else(|| self.hostname.clone()),
            connect_timeout: t.backend_connect,
            greeting_timeout: t.backend_greeting,
            quit_timeout: Duration::from_secs(5),
            max_connections: b.max_connections,
            queue_timeout: b.queue_timeout,
            reuse: b.pool.reuse,
            max_idle: b.pool.max_idle,
            idle_timeout: b.pool.idle_timeout,
            max_age: b.pool.max_age,
            max_transactions: b.pool.max_transactions,
            failover_attempts: b.failover_attempts,
            health: HealthConfig {
                enabled: b.health.enabled,
                interval: b.health.interval,
                timeout: b.health.timeout,
                rise: b.health.rise,
                fall: b.health.fall,
            },
            outlier: OutlierConfig {
                consecutive_failures: b.outlier.consecutive_failures,
                base_ejection: b.outlier.base_ejection,
                max_ejection: b.outlier.max_ejection,
                max_ejected_percent: b.outlier.max_ejected_percent,
            },
            tls,
        })
    }

    /// Every pool reaches its backends over TLS with a verified certificate, so REQUIRETLS
    /// (RFC 8689) may be offered to clients inside TLS.
    pub(crate) fn requiretls_possible(&self) -> bool {
        self.pool_sections()
            .all(|(_, _, b)| b.requiretls_possible())
    }
}

impl Backend {
    /// The static backends.
    pub(crate) fn static_backends(&self) -> Vec<BackendSpec> {
        self.servers
            .iter()
            .map(|s| match s {
                Server::Address(addr) => BackendSpec {
                    addr: *addr,
                    weight: 1,
                    identity: self.identity,
                },
                Server::Table {
                    address,
                    weight,
                    identity,
                } => BackendSpec {
                    addr: *address,
                    weight: (*weight).max(1),
                    identity: identity.unwrap_or(self.identity),
                },
            })
            .collect()
    }

    /// The DNS-discovered backends.
    pub(crate) fn dns_backends(&self) -> Vec<DnsSource> {
        self.dns
            .iter()
            .map(|d| DnsSource {
                name: d.name.clone(),
                port: d.port,
                srv: d.record == DnsRecord::Srv,
                interval: d.interval,
                weight: d.weight.max(1),
                identity: d.identity.unwrap_or(self.identity),
            })
            .collect()
    }

    /// Every backend is reached over TLS with a verified certificate, so REQUIRETLS (RFC 8689)
    /// may be offered to clients inside TLS.
    fn requiretls_possible(&self) -> bool {
        self.tls.mode != BackendTlsMode::None && !self.tls.insecure_skip_verify
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.servers.is_empty() && self.dns.is_empty() {
            return invalid(
                "no backend mail server: set `servers` or [[backend.dns]] in [backend] or pass \
                 --backend HOST:PORT (for a test backend run `attitude sink --listen 127.0.0.1:2526`)"
                    .into(),
            );
        }
        let h = &self.health;
        if h.enabled && (h.rise == 0 || h.fall == 0 || h.interval.is_zero()) {
            return invalid(
                "[backend.health] rise and fall must be at least 1 and interval above 0 \
                 (or set enabled = false)"
                    .into(),
            );
        }
        if self.outlier.max_ejected_percent > 100 {
            return invalid("[backend.outlier] max_ejected_percent is a percentage (0-100)".into());
        }
        if self.pool.max_transactions == 0 {
            return invalid(
                "[backend.pool] max_transactions must be at least 1 (set reuse = false to use \
                 each connection once)"
                    .into(),
            );
        }
        for d in &self.dns {
            if d.name.is_empty() || d.interval.is_zero() {
                return invalid(format!(
                    "[[backend.dns]] {:?}: give a name and an interval above 0",
                    d.name
                ));
            }
        }
        Ok(())
    }
}

impl BackendTls {
    /// A CA file and "verify nothing" contradict each other.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.insecure_skip_verify && self.ca_file.is_some() {
            return Err(ConfigError::Invalid(
                "[backend.tls] ca_file and insecure_skip_verify = true contradict each other; \
                 keep one"
                    .into(),
            ));
        }
        Ok(())
    }
}
