//! The configuration file (TOML): one module per section, each with its struct, its defaults
//! and its own `validate`; [`Config`] gathers them, reads files and checks the whole.
//!
//! - `file`: reading, TOML errors with line and column, merging several files;
//! - `listeners`: `[[listeners]]`, each listener's effective configuration, the trust boundary;
//! - `duration`: `"30s"`-style durations;
//! - one file per section (`limits`, `relay`, `connections`, ..., `backend`, `log`).
//!
//! Enumerations that a library crate owns (`Mode`, `BareLineEndings`, `HeaderAction`, `Field`,
//! `AccessAction`, `PregreetAction`, `IdentityMode`) are that crate's own types, read through
//! its `serde` feature: the file's words and the library's values cannot drift apart.

mod access;
mod auth;
mod backend;
mod connections;
mod content;
mod dns;
mod dnsbl;
pub(crate) mod duration;
mod file;
mod greylist;
mod limits;
mod listeners;
mod log;
mod milter;
mod pregreet;
mod proxy_protocol;
mod rates;
mod relay;
mod routes;
mod scan;
mod smtp;
mod spf;
mod state;
mod stress;
mod tarpit;
mod throttle;
mod timeouts;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use access::Access;
pub(crate) use auth::Auth;
pub(crate) use backend::{Backend, Server};
pub(crate) use connections::Connections;
pub(crate) use content::Content;
pub(crate) use dns::Dns;
pub(crate) use dnsbl::DnsblSection;
pub(crate) use greylist::Greylist;
pub(crate) use limits::Limits;
pub(crate) use listeners::{EffectiveListener, ListenerConfig, ListenerTls};
pub(crate) use log::{Log, LogFormat};
pub(crate) use milter::{MilterConfig, MilterSection};
pub(crate) use pregreet::Pregreet;
pub(crate) use proxy_protocol::ProxyProtocol;
pub(crate) use rates::{RateCount, RateKey, RateRule};
pub(crate) use relay::Relay;
pub(crate) use routes::{CompiledRoute, DEFAULT_POOL, NamedPool, RouteConfig, Routing, Unrouted};
pub(crate) use scan::{Clamav, OnOversize, Rspamd};
pub(crate) use smtp::Smtp;
pub(crate) use spf::SpfSection;
pub(crate) use state::State;
pub(crate) use stress::StressSection;
pub(crate) use tarpit::Tarpit;
pub(crate) use throttle::Throttle;
pub(crate) use timeouts::Timeouts;
pub(crate) use tls::Tls;

/// attitude's whole configuration. Every key is optional; unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// SMTP listen address of the one listener used when `[[listeners]]` is empty.
    pub listen: SocketAddr,
    /// Several listeners (`[[listeners]]`), each with its own TLS mode and policy overrides.
    pub listeners: Vec<ListenerConfig>,
    /// The server certificate (STARTTLS and implicit TLS).
    pub tls: Tls,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`); none to turn it off.
    pub admin: Option<SocketAddr>,
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Worker threads, each with its own listening socket (0: one per CPU).
    pub workers: usize,
    /// Size and count limits.
    pub limits: Limits,
    /// Who may relay where (never an open relay).
    pub relay: Relay,
    /// Connection management: global cap, per-client concurrency and connection rate.
    pub connections: Connections,
    /// Message and recipient rate rules (`[[rates]]`), checked at MAIL or RCPT.
    pub rates: Vec<RateRule>,
    /// DATA bandwidth per session and per client.
    pub throttle: Throttle,
    /// Delays for clients that make errors.
    pub tarpit: Tarpit,
    /// Content policies: header checks and attachment blocking.
    pub content: Content,
    /// Virus scanning with clamd.
    pub clamav: Clamav,
    /// Spam checks with rspamd.
    pub rspamd: Rspamd,
    /// Milters (`[[milters]]`), asked in order at each stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub milters: Vec<MilterConfig>,
    /// What the milters' answers mean.
    #[serde(skip_serializing_if = "is_default")]
    pub milter: MilterSection,
    /// Access lists on client, HELO, sender and recipient.
    pub access: Access,
    /// Greylisting at RCPT TO.
    pub greylist: Greylist,
    /// The early-talker test before the greeting.
    pub pregreet: Pregreet,
    /// DNS resolver settings (DNSBL lookups).
    pub dns: Dns,
    /// DNSBL/DNSWL scoring at connect.
    pub dnsbl: DnsblSection,
    /// SPF at MAIL FROM.
    pub spf: SpfSection,
    /// AUTH relayed to the backend, and its brute-force guard.
    pub auth: Auth,
    /// PROXY protocol in, from a load balancer.
    pub proxy_protocol: ProxyProtocol,
    /// Time limits.
    pub timeouts: Timeouts,
    /// SMTP protocol policy.
    pub smtp: Smtp,
    /// Backend mail servers: the pool named `default`.
    pub backend: Backend,
    /// More pools of backends (`[[pools]]`), each with the keys of `[backend]` and a name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<NamedPool>,
    /// Which recipient domains go to which pool (`[[routes]]`, first match wins).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// What recipients no route matches get.
    #[serde(skip_serializing_if = "is_default")]
    pub routing: Routing,
    /// The fleet's shared memory (Redis), if any.
    pub state: State,
    /// Stress mode: shorter timeouts and lower limits while the sessions are nearly all taken.
    pub stress: StressSection,
    /// Logging.
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:2525".parse().expect("valid address"),
            listeners: Vec::new(),
            tls: Tls::default(),
            admin: Some("127.0.0.1:9325".parse().expect("valid address")),
            hostname: "attitude.localdomain".into(),
            workers: 0,
            limits: Limits::default(),
            relay: Relay::default(),
            connections: Connections::default(),
            rates: Vec::new(),
            throttle: Throttle::default(),
            tarpit: Tarpit::default(),
            content: Content::default(),
            clamav: Clamav::default(),
            rspamd: Rspamd::default(),
            milters: Vec::new(),
            milter: MilterSection::default(),
            access: Access::default(),
            greylist: Greylist::default(),
            pregreet: Pregreet::default(),
            dns: Dns::default(),
            dnsbl: DnsblSection::default(),
            spf: SpfSection::default(),
            auth: Auth::default(),
            proxy_protocol: ProxyProtocol::default(),
            timeouts: Timeouts::default(),
            smtp: Smtp::default(),
            backend: Backend::default(),
            pools: Vec::new(),
            routes: Vec::new(),
            routing: Routing::default(),
            state: State::default(),
            stress: StressSection::default(),
            log: Log::default(),
        }
    }
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or a key/value that does not fit.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Values that parse but do not make sense together.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a configuration file (`validate` checks it).
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&file::read(path)?, &path.display().to_string())
    }

    /// Reads several files, each merged over the ones before it table by table (a base file
    /// and a site's or an overlay's changes), then reads the result as a configuration
    /// (`validate` checks it).
    pub(crate) fn load_files(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        if let [one] = paths {
            return Self::load(one);
        }
        let mut merged = toml::Table::new();
        for path in paths {
            let text = file::read(path)?;
            let table = text
                .parse::<toml::Table>()
                .map_err(|e| file::parse_error(&e, &text, &path.display().to_string()))?;
            file::merge(&mut merged, &table);
        }
        merged.try_into().map_err(|e: toml::de::Error| {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            ConfigError::Invalid(format!("{}: {}", names.join(" + "), e.message().trim()))
        })
    }

    /// Parses configuration text; `origin` names it in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| file::parse_error(&e, text, origin))
    }

    /// Checks everything: the process-wide settings and each listener's effective
    /// configuration. Call after command-line overrides.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_one()?;
        self.state.validate()?;
        self.stress.validate()?;
        self.tls.validate()?;
        self.backend.tls.validate()?;
        let listeners = self.effective_listeners()?;
        for l in &listeners {
            for (pool, _, backend) in self.pool_sections() {
                if let Some(s) = backend
                    .servers
                    .iter()
                    .find(|s| l.addresses.contains(&s.address()))
                {
                    let section = if pool == DEFAULT_POOL {
                        "[backend]".to_string()
                    } else {
                        format!("[[pools]] {pool}")
                    };
                    return Err(ConfigError::Invalid(format!(
                        "{section} servers contains attitude's own listen address {} (listener \
                         {}): that would relay to itself",
                        s.address(),
                        l.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks one configuration's values (the top level, or a listener's merged one), section
    /// by section.
    fn validate_one(&self) -> Result<(), ConfigError> {
        self.backend.validate()?;
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid(format!(
                "hostname {:?} must be a non-empty name without spaces",
                self.hostname
            )));
        }
        self.limits.validate()?;
        self.relay.validate()?;
        self.connections.validate()?;
        self.access.rules()?;
        self.dnsbl.validate()?;
        self.auth.validate()?;
        self.proxy_protocol.validate()?;
        self.timeouts.validate()?;
        self.dns.validate()?;
        self.pregreet.validate()?;
        self.greylist.validate()?;
        self.content.validate()?;
        self.clamav.validate()?;
        self.rspamd.validate()?;
        milter::validate(&self.milters, &self.milter)?;
        self.throttle.validate()?;
        self.validate_routes()?;
        rates::validate(&self.rates)
    }

    /// What the files the configuration names for lists hold (route domains, access values),
    /// the top level's and each listener's: a reload applies a change in them even when the
    /// configuration itself did not change.
    pub(crate) fn list_files(&self) -> String {
        let mut configs = vec![self.clone()];
        if let Ok(listeners) = self.effective_listeners() {
            configs.extend(listeners.into_iter().map(|l| l.config));
        }
        let mut paths: Vec<&Path> = Vec::new();
        for c in &configs {
            paths.extend(c.routes.iter().filter_map(|r| r.file.as_deref()));
            paths.extend(c.access.rules.iter().filter_map(|r| r.file.as_deref()));
        }
        paths.sort();
        paths.dedup();
        paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
                format!("{}\n{text}\n", p.display())
            })
            .collect()
    }

    /// The configuration as TOML.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Text that becomes an SMTP reply line: non-empty printable ASCII.
fn printable(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_control() || !c.is_ascii())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_parse_from_empty_file() {
        let config = Config::parse("", "test").unwrap();
        assert_eq!(config.limits.max_command_line, 512);
        assert_eq!(config.timeouts.command, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_are_refused_with_position() {
        let err = Config::parse(
            "hostname = \"a\"\n[limits]\nmax_mesage_size = 5\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("f.toml:3:1:"), "{err}");
        assert!(err.contains("max_mesage_size"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            duration::parse("36d").unwrap(),
            Duration::from_secs(36 * 86400)
        );
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(duration::parse("5 parsecs").is_err());
        let config = Config::parse("[timeouts]\ncommand = \"2s\"\ndata = 7\n", "t").unwrap();
        assert_eq!(config.timeouts.command, Duration::from_secs(2));
        assert_eq!(config.timeouts.data, Duration::from_secs(7));
        let err = Config::parse("[timeouts]\ncommand = \"2 weeks\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("t:2:11"), "{err}");
    }

    #[test]
    fn round_trip_through_toml() {
        let mut config = Config::default();
        config.backend.servers = vec![Server::Address("127.0.0.1:2526".parse().unwrap())];
        let again = Config::parse(&config.to_toml(), "printed").unwrap();
        assert_eq!(again.backend.servers, config.backend.servers);
        assert_eq!(again.timeouts.drain_grace, config.timeouts.drain_grace);
    }

    #[test]
    fn a_listener_policy_overrides_only_that_listener() {
        let config = Config::parse(
            "[backend]\nservers = [\"127.0.0.1:25\"]\n\
             [limits]\nmax_recipients = 50\n\
             [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\
             [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:2587\"\n\
             policy.limits.max_recipients = 5\npolicy.auth = { enabled = true, require = true }\n",
            "test",
        )
        .unwrap();
        config.validate().unwrap();
        let l = config.effective_listeners().unwrap();
        assert_eq!(l[0].config.limits.max_recipients, 50);
        assert!(!l[0].config.auth.require);
        assert_eq!(l[1].config.limits.max_recipients, 5);
        assert!(l[1].config.auth.enabled && l[1].config.auth.require);
        // Untouched keys of an overridden section keep the top level's values.
        assert_eq!(
            l[1].config.limits.max_message_size,
            config.limits.max_message_size
        );
        assert_eq!(l[0].tls, ListenerTls::None, "no certificate: no STARTTLS");
    }

    #[test]
    fn later_files_merge_over_earlier_ones() {
        let dir = std::env::temp_dir().join(format!("attitude-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
        std::fs::write(
            &a,
            "hostname = \"a.test\"\n[limits]\nmax_recipients = 7\nmax_errors = 3\n\
             [backend]\nservers = [\"127.0.0.1:25\"]\n",
        )
        .unwrap();
        std::fs::write(&b, "[limits]\nmax_recipients = 9\n").unwrap();
        let config = Config::load_files(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(config.hostname, "a.test");
        assert_eq!(config.limits.max_recipients, 9);
        assert_eq!(config.limits.max_errors, 3);
        std::fs::write(&b, "[limits]\nmax_recipients = \"nine\"\n").unwrap();
        let err = Config::load_files(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("a.toml + ") && err.contains("b.toml"), "{err}");
    }

    #[test]
    fn validation_says_what_to_fix() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("--backend"), "{err}");
    }

    #[test]
    fn error_texts_read_as_one_line_without_runs_of_spaces() {
        let listener = "[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n";
        for (text, says) in [
            (
                format!("{listener}policy.workers = 2\n"),
                "cannot differ per listener",
            ),
            (
                format!("{listener}policy.greylist.delay = \"1m\"\n"),
                "the greylist store is shared",
            ),
            (
                "[backend.tls]\nca_file = \"/x.pem\"\ninsecure_skip_verify = true\n".to_string(),
                "contradict each other",
            ),
            (
                "listen = \"127.0.0.1:2525\"\n".to_string(),
                "would relay to itself",
            ),
        ] {
            let text = format!("{text}[backend]\nservers = [\"127.0.0.1:2525\"]\n");
            let config = Config::parse(&text, "t").unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("  "), "{err}");
        }
    }
}
