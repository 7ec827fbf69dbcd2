//! The configuration file (TOML), its defaults and its validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use attitude_balance::{
    BackendSpec, DnsSource, HealthConfig, IdentityMode, OutlierConfig, PoolConfig,
};
use attitude_edge::tls::{ClientTls, Verify};
use ipnet::IpNet;

/// The CA bundle of Debian and its children (package ca-certificates).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// attitude's whole configuration. Every key is optional; unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
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
    /// Backend mail servers.
    pub backend: Backend,
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
            log: Log::default(),
        }
    }
}

/// `[tls]`: the certificate and key (PEM) for STARTTLS and implicit TLS; reloaded when the
/// files change. Without them, STARTTLS is not offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Limit for a TLS handshake.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Reload the pair when something changes in their directories.
    pub watch: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            handshake_timeout: Duration::from_secs(10),
            watch: true,
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerTls {
    /// Never (STARTTLS is not offered).
    None,
    /// STARTTLS offered (port 25, 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `[[listeners]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name in logs and errors (`mx`, `submission`, `submissions`).
    pub name: String,
    /// Listen address.
    pub address: SocketAddr,
    /// `"none"`, `"starttls"` or `"implicit"` (default: `"starttls"` when `[tls]` has a
    /// certificate, else `"none"`).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Expect a PROXY header on every connection (default: `[proxy_protocol] enabled`).
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    /// Sections merged over the top-level ones for this listener's sessions, e.g.
    /// `policy.auth = { require = true }`.
    #[serde(default)]
    pub policy: toml::Table,
}

/// Top-level keys a listener's `policy` may not override: they belong to the process.
const PROCESS_KEYS: &[&str] = &[
    "listen",
    "listeners",
    "tls",
    "admin",
    "workers",
    "backend",
    "dns",
    "log",
    "proxy_protocol",
];

/// One listener as it runs: its address, TLS, PROXY, and its whole effective configuration.
#[derive(Debug, Clone)]
pub struct EffectiveListener {
    /// Name.
    pub name: String,
    /// Address.
    pub address: SocketAddr,
    /// TLS mode.
    pub tls: ListenerTls,
    /// PROXY protocol in.
    pub proxy_protocol: bool,
    /// The configuration with the listener's `policy` merged in.
    pub config: Config,
}

impl EffectiveListener {
    /// The Mailu open relay: behind a load balancer that hides the client, every client comes
    /// from the balancer, and a trusted balancer network trusts everyone. Refused unless the
    /// listener requires PROXY headers.
    fn trust_boundary(&self) -> Result<(), ConfigError> {
        if self.proxy_protocol {
            return Ok(());
        }
        let overlap = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let c = &self.config;
        for lb in &c.proxy_protocol.sources {
            if let Some(trusted) = c.relay.trusted_networks.iter().find(|t| overlap(t, lb)) {
                return Err(ConfigError::Invalid(format!(
                    "listener {}: [relay] trusted_networks has {trusted}, which holds the load \
                     balancer's {lb} ([proxy_protocol] sources), but this listener does not \
                     require PROXY protocol: every client would come from the balancer and relay \
                     anywhere (an open relay). Set [proxy_protocol] enabled = true (or the \
                     listener's proxy_protocol = true), or take the balancer's network out of \
                     trusted_networks",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message in octets (advertised as SIZE; checked on MAIL SIZE= and on the body).
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest line in a message, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Minimum DATA rate in octets per second once `timeouts.data` has passed (0 = off).
    pub min_data_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
            max_command_line: 512,
            max_text_line: 1000,
            min_data_rate: 500,
        }
    }
}

/// `enforce` refuses; `dry-run` only logs and counts what it would have refused.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RuleMode {
    /// Refuse over the limit.
    #[default]
    Enforce,
    /// Count and log, refuse nothing.
    DryRun,
}

impl From<RuleMode> for attitude_layers::Mode {
    fn from(mode: RuleMode) -> Self {
        match mode {
            RuleMode::Enforce => attitude_layers::Mode::Enforce,
            RuleMode::DryRun => attitude_layers::Mode::DryRun,
        }
    }
}

/// `[relay]`: a recipient is accepted when its domain is local, the client is trusted or has
/// authenticated; anything else is `554 5.7.1 Relay access denied`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Domains attitude accepts mail for from anyone; `.example.com` also matches subdomains.
    pub local_domains: Vec<String>,
    /// Clients that may relay anywhere (your own applications and submission hosts).
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// `"enforce"` or `"dry-run"`.
    pub mode: RuleMode,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            local_domains: Vec::new(),
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            mode: RuleMode::Enforce,
        }
    }
}

/// `[connections]`: what one client, and all of them, may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connections {
    /// Sessions open at once, all clients together; over it new clients get `421 4.3.2` at once.
    pub max_sessions: usize,
    /// Clients are counted per network of this many bits (IPv4).
    pub client_prefix_v4: u8,
    /// Clients are counted per network of this many bits (IPv6; a /64 is one subscriber).
    pub client_prefix_v6: u8,
    /// Networks exempt from the per-client rules (not from `max_sessions`); default loopback.
    pub exempt_networks: Vec<ipnet::IpNet>,
    /// Most client keys tracked by the rate rule before it starts over.
    pub max_tracked_clients: usize,
    /// Sessions at once per client.
    pub per_client: PerClientLimit,
    /// New sessions per client over time.
    pub rate: ConnectionRate,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            client_prefix_v4: 32,
            client_prefix_v6: 64,
            // Like Postfix's anvil, which exempts $mynetworks (loopback by default).
            exempt_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            max_tracked_clients: 100_000,
            per_client: PerClientLimit::default(),
            rate: ConnectionRate::default(),
        }
    }
}

/// `[connections.per_client]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerClientLimit {
    /// Sessions at once per client; over it `421 4.7.0`. 0 turns the rule off.
    pub limit: usize,
    /// `"enforce"` or `"dry-run"`.
    pub mode: RuleMode,
}

impl Default for PerClientLimit {
    fn default() -> Self {
        Self {
            limit: 20,
            mode: RuleMode::Enforce,
        }
    }
}

/// `[connections.rate]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionRate {
    /// New sessions per minute per client (sustained); over it `421 4.7.0`. 0 turns it off.
    pub per_minute: u32,
    /// Sessions a client may open in a burst above the sustained rate.
    pub burst: u32,
    /// `"enforce"` or `"dry-run"`.
    pub mode: RuleMode,
}

impl Default for ConnectionRate {
    fn default() -> Self {
        Self {
            per_minute: 120,
            burst: 30,
            mode: RuleMode::Enforce,
        }
    }
}

/// `[throttle]`: how fast message content may arrive. The sender waits; nothing is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Throttle {
    /// DATA octets per second per session (0 = off).
    pub session_bytes_per_second: u32,
    /// DATA octets per second per client network, all its sessions together (0 = off).
    pub client_bytes_per_second: u32,
    /// Octets that may arrive at full speed before the rate applies.
    pub burst_bytes: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            session_bytes_per_second: 0,
            client_bytes_per_second: 0,
            burst_bytes: 256 * 1024,
        }
    }
}

/// `[tarpit]`: once a session has made `soft_error_limit` errors, each reply waits
/// `delay_per_error` times the errors over the limit (up to `max_delay`); `limits.max_errors`
/// closes it. A session a policy marked suspicious (e.g. it tried to relay) waits at least
/// `suspicious_delay` before each reply. At most `budget` sessions are held at once; over it a
/// session is closed with 421.
///
/// A client refused for its per-client connection limit or connection rate waits
/// `refusal_delay` for its 421: the worm that reconnects at once is slowed down, and each held
/// refusal is a connection it does not make. At most `refusal_budget` refusals are held at once;
/// beyond that the 421 is immediate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tarpit {
    /// Errors before replies are delayed (0: errors alone never delay).
    pub soft_error_limit: u32,
    /// Delay per error over the soft limit.
    #[serde(with = "duration")]
    pub delay_per_error: Duration,
    /// Longest delay for errors.
    #[serde(with = "duration")]
    pub max_delay: Duration,
    /// Delay before each reply to a session marked suspicious (0 turns it off).
    #[serde(with = "duration")]
    pub suspicious_delay: Duration,
    /// Sessions held in a delay at once.
    pub budget: usize,
    /// How long a client over its per-client connection limit or rate waits for its 421
    /// (0: at once).
    #[serde(with = "duration")]
    pub refusal_delay: Duration,
    /// Refusals held at once.
    pub refusal_budget: usize,
}

impl Default for Tarpit {
    fn default() -> Self {
        Self {
            // Postfix's smtpd_soft_error_limit and smtpd_error_sleep_time.
            soft_error_limit: 10,
            delay_per_error: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            suspicious_delay: Duration::from_secs(3),
            budget: 1000,
            refusal_delay: Duration::from_secs(5),
            refusal_budget: 1000,
        }
    }
}

/// `[content]`: checks on the message itself, at end of data. A refused message is aborted at
/// the backend (it is never committed) and the client gets `554 5.7.1` (`451 4.7.1` for a
/// deferring header check).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Content {
    /// Refuse messages with an attachment whose name ends in a blocked extension.
    pub block_attachments: bool,
    /// The blocked extensions (any case, with or without the dot).
    pub blocked_extensions: Vec<String>,
    /// Regular expressions over each header line, first match decides.
    pub header_checks: Vec<HeaderCheckRule>,
    /// Octets of message copies held at once across all sessions; over it messages are deferred
    /// with `451 4.3.1`.
    pub buffer_budget: usize,
    /// Enforce or dry-run (for all content policies).
    pub mode: RuleMode,
}

impl Default for Content {
    fn default() -> Self {
        Self {
            block_attachments: true,
            blocked_extensions: attitude_policy::content::DEFAULT_BLOCKED
                .iter()
                .map(|e| (*e).to_string())
                .collect(),
            header_checks: Vec::new(),
            buffer_budget: 256 * 1024 * 1024,
            mode: RuleMode::Enforce,
        }
    }
}

/// One `[[content.header_checks]]` rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCheckRule {
    /// Regular expression (case-insensitive) over `Name: value`, unfolded.
    pub pattern: String,
    /// `reject` (554 5.7.1) or `defer` (451 4.7.1).
    #[serde(default = "HeaderCheckRule::default_action")]
    pub action: HeaderCheckAction,
    /// Reply text (default: "Message content rejected" / "... deferred").
    pub text: Option<String>,
}

impl HeaderCheckRule {
    fn default_action() -> HeaderCheckAction {
        HeaderCheckAction::Reject
    }
}

/// What a matching header check does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderCheckAction {
    /// 554 5.7.1.
    Reject,
    /// 451 4.7.1.
    Defer,
}

/// `[access]`: rules on the client, HELO name, sender and recipient, checked in order at MAIL
/// FROM and RCPT TO; the first match decides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// The rules (`[[access.rules]]`).
    pub rules: Vec<AccessRuleConfig>,
    /// Enforce or dry-run.
    pub mode: RuleMode,
}

/// One `[[access.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleConfig {
    /// What the rule looks at.
    pub check: AccessField,
    /// Values inline.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values from a file, one per line (`#` starts a comment).
    pub file: Option<PathBuf>,
    /// What a match does.
    pub action: AccessActionConfig,
    /// Reply text of a `deny`.
    pub text: Option<String>,
}

/// What an access rule looks at.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AccessField {
    /// The client address (CIDR networks).
    Client,
    /// The HELO/EHLO name.
    Helo,
    /// The MAIL FROM address.
    Sender,
    /// The RCPT TO address.
    Recipient,
}

/// What a matching access rule does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AccessActionConfig {
    /// Let it through; later rules are not checked.
    Allow,
    /// 554 5.7.1.
    Deny,
    /// Let it through and exempt the session from greylisting (client and helo rules).
    Skip,
}

/// `[greylist]`: the first attempt of a (client network, sender, recipient) triplet gets
/// `451 4.7.1` at RCPT TO; a retry after `delay` and within `retry_window` passes. Off by
/// default (it delays every new correspondent's first message by the sender's retry interval).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Greylist {
    /// Greylist at all.
    pub enabled: bool,
    /// A retry passes once this long after the first attempt.
    #[serde(with = "duration")]
    pub delay: Duration,
    /// ... and only within this long of it; later the triplet starts over.
    #[serde(with = "duration")]
    pub retry_window: Duration,
    /// A passed triplet is remembered this long after its last message.
    #[serde(with = "duration")]
    pub pass_ttl: Duration,
    /// Passed triplets after which a client network skips greylisting ...
    pub allowlist_after: u32,
    /// ... for this long after its last message.
    #[serde(with = "duration")]
    pub allowlist_ttl: Duration,
    /// Client networks: the address reduced to this prefix (IPv4).
    pub client_prefix_v4: u8,
    /// ... and IPv6.
    pub client_prefix_v6: u8,
    /// Most triplets remembered.
    pub max_entries: usize,
    /// Saved on shutdown, loaded on start (none: memory only).
    pub file: Option<PathBuf>,
    /// Enforce or dry-run.
    pub mode: RuleMode,
}

impl Default for Greylist {
    fn default() -> Self {
        // The times are the greylist's own defaults (Postgrey's delay, spamd's TTLs).
        let timing = attitude_policy::greylist::Timing::default();
        Self {
            enabled: false,
            delay: timing.delay,
            retry_window: timing.retry_window,
            pass_ttl: timing.pass_ttl,
            allowlist_after: timing.allowlist_after,
            allowlist_ttl: timing.allowlist_ttl,
            client_prefix_v4: 24,
            client_prefix_v6: 64,
            max_entries: timing.max_entries,
            file: None,
            mode: RuleMode::Enforce,
        }
    }
}

/// `[pregreet]`: postscreen's early-talker test. Before the greeting attitude pauses (after a
/// `220-` first line when `multiline`); a client that talks in the pause is refused and
/// remembered, one that waits is greeted at once for `pass_ttl`. Off by default (it delays each
/// new client's first session by `pause`). `[relay] trusted_networks` are not tested.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pregreet {
    /// Run the test.
    pub enabled: bool,
    /// The pause before the greeting.
    #[serde(with = "duration")]
    pub pause: Duration,
    /// Send `220-hostname ESMTP` before the pause.
    pub multiline: bool,
    /// `reject` (greet, 554 5.5.1 to the first command, close) or `drop` (close at once).
    pub action: PregreetActionConfig,
    /// A client that waited is greeted at once for this long.
    #[serde(with = "duration")]
    pub pass_ttl: Duration,
    /// An early talker is refused at once for this long.
    #[serde(with = "duration")]
    pub fail_ttl: Duration,
    /// Most clients remembered.
    pub max_entries: usize,
    /// Enforce or dry-run.
    pub mode: RuleMode,
}

impl Default for Pregreet {
    fn default() -> Self {
        Self {
            enabled: false,
            // postscreen_greet_wait and postscreen_greet_ttl.
            pause: Duration::from_secs(6),
            multiline: true,
            action: PregreetActionConfig::Reject,
            pass_ttl: Duration::from_secs(86400),
            fail_ttl: Duration::from_secs(3600),
            max_entries: 100_000,
            mode: RuleMode::Enforce,
        }
    }
}

/// What happens to an early talker.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PregreetActionConfig {
    /// Greet, answer the first command 554 5.5.1, close.
    Reject,
    /// Close at once.
    Drop,
}

/// `[dns]`: the resolver attitude's own lookups use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Nameservers as IP:PORT (empty: the system's, from /etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// How long one client's lookups may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[dnsbl]`: DNSBL/DNSWL scoring at connect, postscreen style.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblSection {
    /// Score clients at all.
    pub enabled: bool,
    /// `zone[=answer filter][*weight]`, e.g. `"zen.spamhaus.org=127.0.0.[2..11]*3"`.
    pub zones: Vec<String>,
    /// Refused (554 5.7.1) at or over this score.
    pub threshold: i32,
    /// Exempt from greylisting at or under this score (DNSWL).
    pub allowlist_threshold: i32,
    /// How long a score is reused.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Most scores cached.
    pub max_cache: usize,
    /// Enforce or dry-run.
    pub mode: RuleMode,
}

impl Default for DnsblSection {
    fn default() -> Self {
        Self {
            enabled: false,
            zones: Vec::new(),
            threshold: 1,
            allowlist_threshold: -1,
            cache_ttl: Duration::from_secs(600),
            max_cache: 100_000,
            mode: RuleMode::Enforce,
        }
    }
}

/// `[proxy_protocol]`: a PROXY header (v1 or v2) before the session, from a load balancer in
/// `sources`, carries the real client address every policy, log line and metric then uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocol {
    /// Require a PROXY header on every connection.
    pub enabled: bool,
    /// Where the load balancer connects from: the only peers whose header is believed (others
    /// are closed); also checked against `[relay] trusted_networks` (see `validate`).
    pub sources: Vec<IpNet>,
    /// How long the header may take.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            enabled: false,
            sources: Vec::new(),
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// `[auth]`: AUTH PLAIN/LOGIN relayed to the backend, which checks the credentials; an
/// authenticated client may relay anywhere. Offered only when the backend offers it, and only
/// over TLS (STARTTLS or implicit TLS) unless `allow_plaintext`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Offer and relay AUTH.
    pub enabled: bool,
    /// Offer AUTH on unencrypted connections (passwords in the clear: lab and loopback use).
    pub allow_plaintext: bool,
    /// MAIL needs AUTH first (530 5.7.0), as on a submission port.
    pub require: bool,
    /// Mechanisms to offer (of PLAIN and LOGIN).
    pub mechanisms: Vec<String>,
    /// Failed exchanges per client network within `window` before it is banned.
    pub max_failures_per_client: u32,
    /// Failed exchanges per login, from anywhere, within `window` before it is banned.
    pub max_failures_per_login: u32,
    /// The counting window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// How long a network or login stays banned.
    #[serde(with = "duration")]
    pub ban: Duration,
    /// Delay before answering a failed exchange.
    #[serde(with = "duration")]
    pub failure_delay: Duration,
    /// Enforce the bans, or dry-run (count them only).
    pub mode: RuleMode,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_plaintext: false,
            require: false,
            mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
            max_failures_per_client: 5,
            max_failures_per_login: 10,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(1800),
            failure_delay: Duration::from_secs(2),
            mode: RuleMode::Enforce,
        }
    }
}

/// `[spf]`: SPF (RFC 7208) at MAIL FROM, through the `[dns]` resolver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpfSection {
    /// Check SPF at all.
    pub enabled: bool,
    /// Refuse `fail` with 550 5.7.23 (false: only count it).
    pub reject_fail: bool,
    /// How long a result for the same client address, sender and HELO is reused.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Most results cached.
    pub max_cache: usize,
}

impl Default for SpfSection {
    fn default() -> Self {
        Self {
            enabled: false,
            reject_fail: true,
            cache_ttl: Duration::from_secs(60),
            max_cache: 10_000,
        }
    }
}

/// What a rate rule counts by.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RateKey {
    /// The client's network (`connections.client_prefix_v4`/`_v6`; exempt networks skip).
    Client,
    /// The MAIL FROM address.
    Sender,
    /// The MAIL FROM domain.
    SenderDomain,
    /// The authenticated user (clients that did not authenticate are not counted).
    AuthUser,
    /// The recipient's domain (only with `count = "recipients"`).
    RcptDomain,
}

/// What a rate rule counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RateCount {
    /// Messages, counted at MAIL.
    Messages,
    /// Recipients, counted at RCPT.
    Recipients,
}

/// One `[[rates]]` rule: at most `limit` per `per` (GCRA), bursts up to `burst`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Name in replies, logs and metrics.
    pub name: String,
    /// What it counts by.
    pub key: RateKey,
    /// What it counts.
    pub count: RateCount,
    /// How many per `per`.
    pub limit: u32,
    /// The period, e.g. `"1h"`.
    #[serde(with = "duration")]
    pub per: Duration,
    /// Allowed in a burst (default: `limit`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// `"enforce"` or `"dry-run"`.
    #[serde(default)]
    pub mode: RuleMode,
    /// Reply code over the rate: 450 (default) or 451.
    #[serde(default = "default_rate_code")]
    pub code: u16,
    /// Most keys tracked before the rule starts over.
    #[serde(default = "default_rate_keys")]
    pub max_keys: usize,
}

fn default_rate_code() -> u16 {
    450
}

fn default_rate_keys() -> usize {
    100_000
}

/// `[timeouts]`, written like `"300s"`, `"5m"`, `"1h"` or `"250ms"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A complete command must arrive within this time.
    #[serde(with = "duration")]
    pub command: Duration,
    /// Longest silence inside DATA.
    #[serde(with = "duration")]
    pub data: Duration,
    /// TCP connect to a backend.
    #[serde(with = "duration")]
    pub backend_connect: Duration,
    /// Backend greeting and EHLO reply.
    #[serde(with = "duration")]
    pub backend_greeting: Duration,
    /// Backend reply to MAIL, RCPT, DATA, RSET.
    #[serde(with = "duration")]
    pub backend_command: Duration,
    /// Writing one DATA chunk to a backend.
    #[serde(with = "duration")]
    pub backend_data: Duration,
    /// Backend reply to end of data.
    #[serde(with = "duration")]
    pub backend_data_end: Duration,
    /// On SIGTERM, how long sessions in flight may take to finish.
    #[serde(with = "duration")]
    pub drain_grace: Duration,
    /// On SIGTERM, how long the listener keeps accepting, answering new clients `421 4.3.2`
    /// (a load balancer needs a few seconds to stop sending); within `drain_grace`.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(300),
            data: Duration::from_secs(180),
            backend_connect: Duration::from_secs(10),
            backend_greeting: Duration::from_secs(60),
            backend_command: Duration::from_secs(120),
            backend_data: Duration::from_secs(180),
            backend_data_end: Duration::from_secs(600),
            drain_grace: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
        }
    }
}

/// What to do with bare CR/LF and NUL in DATA.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BareLineEndings {
    /// Refuse the message (550 5.6.0) at end of data.
    #[default]
    Reject,
    /// Turn them into CRLF (NUL is dropped).
    Normalize,
}

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Bare CR/LF and NUL in DATA: `"reject"` (default) or `"normalize"`.
    pub bare_line_endings: BareLineEndings,
    /// MAIL needs TLS first (530 5.7.0): for a submission listener.
    pub require_tls: bool,
}

/// `[backend]`: the pool of backend mail servers (see docs/operations.md, "Backends").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backend {
    /// Static backends: `"host:port"` or `{ address = "host:port", weight = 2, identity = "xclient" }`.
    pub servers: Vec<Server>,
    /// DNS names whose addresses are backends (`[[backend.dns]]`), re-resolved on an interval.
    pub dns: Vec<DnsBackend>,
    /// How backends learn the real client: `"none"`, `"xclient"` or `"proxy"` (PROXY v2).
    pub identity: Identity,
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
            identity: Identity::None,
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
pub enum Server {
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
        identity: Option<Identity>,
    },
}

fn one() -> u32 {
    1
}

impl Server {
    /// The address.
    pub fn address(&self) -> SocketAddr {
        match self {
            Server::Address(a) | Server::Table { address: a, .. } => *a,
        }
    }
}

/// How a backend learns the real client.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// It sees attitude's address.
    #[default]
    None,
    /// XCLIENT before each transaction (Postfix: `smtpd_authorized_xclient_hosts`).
    Xclient,
    /// PROXY protocol v2 at connect (Postfix: `smtpd_upstream_proxy_protocol = haproxy`).
    Proxy,
}

impl From<Identity> for IdentityMode {
    fn from(i: Identity) -> Self {
        match i {
            Identity::None => IdentityMode::None,
            Identity::Xclient => IdentityMode::Xclient,
            Identity::Proxy => IdentityMode::Proxy,
        }
    }
}

/// `[[backend.dns]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsBackend {
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
    pub identity: Option<Identity>,
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
pub enum DnsRecord {
    /// A and AAAA.
    #[default]
    A,
    /// SRV.
    Srv,
}

/// How attitude speaks TLS to backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
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
pub struct BackendTls {
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
pub struct BackendPool {
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
pub struct BackendHealth {
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
pub struct BackendOutlier {
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
    /// The pool's settings; fails when the backend TLS settings do not load.
    pub fn pool_config(&self) -> Result<PoolConfig, String> {
        let b = &self.backend;
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

    /// The static backends.
    pub fn static_backends(&self) -> Vec<BackendSpec> {
        self.backend
            .servers
            .iter()
            .map(|s| match s {
                Server::Address(addr) => BackendSpec {
                    addr: *addr,
                    weight: 1,
                    identity: self.backend.identity.into(),
                },
                Server::Table {
                    address,
                    weight,
                    identity,
                } => BackendSpec {
                    addr: *address,
                    weight: (*weight).max(1),
                    identity: identity.unwrap_or(self.backend.identity).into(),
                },
            })
            .collect()
    }

    /// The DNS-discovered backends.
    pub fn dns_backends(&self) -> Vec<DnsSource> {
        self.backend
            .dns
            .iter()
            .map(|d| DnsSource {
                name: d.name.clone(),
                port: d.port,
                srv: d.record == DnsRecord::Srv,
                interval: d.interval,
                weight: d.weight.max(1),
                identity: d.identity.unwrap_or(self.backend.identity).into(),
            })
            .collect()
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `"text"` or `"json"`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `"info"` or `"info,attitude_service=debug"`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// Reads several files, each merged over the ones before it table by table (a base file
    /// and a site's or an overlay's changes), then validates the result.
    pub fn load_files(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        if let [one] = paths {
            return Self::load(one);
        }
        let mut merged = toml::Table::new();
        for path in paths {
            let text = read(path)?;
            let table = text
                .parse::<toml::Table>()
                .map_err(|e| parse_error(&e, &text, &path.display().to_string()))?;
            merge(&mut merged, &table);
        }
        merged.try_into().map_err(|e: toml::de::Error| {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            ConfigError::Invalid(format!("{}: {}", names.join(" + "), e.message().trim()))
        })
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| parse_error(&e, text, origin))
    }

    /// The listeners as they run, each checked against the trust boundary.
    pub fn effective_listeners(&self) -> Result<Vec<EffectiveListener>, ConfigError> {
        let listeners = self.listeners_unchecked()?;
        for l in &listeners {
            l.trust_boundary()?;
        }
        Ok(listeners)
    }

    /// The listeners as they run: `[[listeners]]`, or one from `listen`. Each carries the
    /// configuration its sessions use, validated, with its `policy` merged in.
    fn listeners_unchecked(&self) -> Result<Vec<EffectiveListener>, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let default_tls = if self.tls.cert.is_some() {
            ListenerTls::Starttls
        } else {
            ListenerTls::None
        };
        if self.listeners.is_empty() {
            if self.smtp.require_tls && default_tls != ListenerTls::Starttls {
                return Err(invalid(
                    "[smtp] require_tls needs STARTTLS: set [tls] cert and key".into(),
                ));
            }
            return Ok(vec![EffectiveListener {
                name: "smtp".into(),
                address: self.listen,
                tls: default_tls,
                proxy_protocol: self.proxy_protocol.enabled,
                config: self.clone(),
            }]);
        }
        let mut base = toml::Table::try_from(self)
            .map_err(|e| invalid(format!("cannot merge listener policies: {e}")))?;
        base.remove("listeners");
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for l in &self.listeners {
            let name = &l.name;
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(invalid(format!(
                    "[[listeners]] name {name:?} must be non-empty and unique"
                )));
            }
            if let Some(key) = l.policy.keys().find(|k| PROCESS_KEYS.contains(&k.as_str())) {
                return Err(invalid(format!(
                    "[[listeners]] {name}: policy.{key} cannot differ per listener (it belongs to                      the whole process); set it at the top level"
                )));
            }
            if let Some(toml::Value::Table(g)) = l.policy.get("greylist")
                && let Some(key) = g.keys().find(|k| k.as_str() != "enabled")
            {
                return Err(invalid(format!(
                    "[[listeners]] {name}: policy.greylist.{key}: the greylist store is shared,                      so a listener may only set `enabled`; set {key} in [greylist]"
                )));
            }
            let mut merged = base.clone();
            merge(&mut merged, &l.policy);
            let config: Config = merged.try_into().map_err(|e: toml::de::Error| {
                invalid(format!(
                    "[[listeners]] {name}: policy: {}",
                    e.message().trim()
                ))
            })?;
            config
                .validate_one()
                .map_err(|e| invalid(format!("[[listeners]] {name}: {e}")))?;
            let tls = l.tls.unwrap_or(default_tls);
            if tls != ListenerTls::None && self.tls.cert.is_none() {
                return Err(invalid(format!(
                    "[[listeners]] {name}: tls = \"{}\" needs a certificate: set [tls] cert and \
                     key (or --tls-cert and --tls-key)",
                    if tls == ListenerTls::Implicit {
                        "implicit"
                    } else {
                        "starttls"
                    }
                )));
            }
            if config.smtp.require_tls && tls != ListenerTls::Starttls {
                return Err(invalid(format!(
                    "[[listeners]] {name}: smtp.require_tls needs tls = \"starttls\" (an \
                     implicit-TLS listener is always encrypted; a plain one never)"
                )));
            }
            out.push(EffectiveListener {
                name: name.clone(),
                address: l.address,
                tls,
                proxy_protocol: l.proxy_protocol.unwrap_or(self.proxy_protocol.enabled),
                config,
            });
        }
        for (i, a) in out.iter().enumerate() {
            // Port 0 (tests) picks a free port for each.
            if let Some(b) = out[..i]
                .iter()
                .find(|b| b.address == a.address && a.address.port() != 0)
            {
                return Err(invalid(format!(
                    "[[listeners]] {} and {} both listen on {}",
                    b.name, a.name, a.address
                )));
            }
        }
        Ok(out)
    }

    /// Checks everything: the process-wide settings and each listener's effective
    /// configuration. Call after command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_one()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid(
                "[tls] cert and key go together: set both (or --tls-cert and --tls-key)".into(),
            );
        }
        let t = &self.backend.tls;
        if t.insecure_skip_verify && t.ca_file.is_some() {
            return invalid(
                "[backend.tls] ca_file and insecure_skip_verify = true contradict each other;                  keep one"
                    .into(),
            );
        }
        let listeners = self.effective_listeners()?;
        for l in &listeners {
            if let Some(s) = self
                .backend
                .servers
                .iter()
                .find(|s| s.address() == l.address)
            {
                return invalid(format!(
                    "[backend] servers contains attitude's own listen address {} (listener {}):                      that would relay to itself",
                    s.address(),
                    l.name
                ));
            }
        }
        Ok(())
    }

    /// Checks one configuration's values (the top level, or a listener's merged one).
    fn validate_one(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.backend.servers.is_empty() && self.backend.dns.is_empty() {
            return invalid(
                "no backend mail server: set `servers` or [[backend.dns]] in [backend] or pass \
                 --backend HOST:PORT (for a test backend run `attitude sink --listen 127.0.0.1:2526`)"
                    .into(),
            );
        }
        let h = &self.backend.health;
        if h.enabled && (h.rise == 0 || h.fall == 0 || h.interval.is_zero()) {
            return invalid(
                "[backend.health] rise and fall must be at least 1 and interval above 0 \
                 (or set enabled = false)"
                    .into(),
            );
        }
        if self.backend.outlier.max_ejected_percent > 100 {
            return invalid("[backend.outlier] max_ejected_percent is a percentage (0-100)".into());
        }
        if self.backend.pool.max_transactions == 0 {
            return invalid(
                "[backend.pool] max_transactions must be at least 1 (set reuse = false to use \
                 each connection once)"
                    .into(),
            );
        }
        for d in &self.backend.dns {
            if d.name.is_empty() || d.interval.is_zero() {
                return invalid(format!(
                    "[[backend.dns]] {:?}: give a name and an interval above 0",
                    d.name
                ));
            }
        }
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return invalid(format!(
                "hostname {:?} must be a non-empty name without spaces",
                self.hostname
            ));
        }
        let l = &self.limits;
        if l.max_message_size == 0 {
            return invalid("[limits] max_message_size must be greater than 0".into());
        }
        if l.max_command_line < 512 {
            return invalid(format!(
                "[limits] max_command_line = {} is below the RFC 5321 minimum of 512",
                l.max_command_line
            ));
        }
        if l.max_text_line < 1000 {
            return invalid(format!(
                "[limits] max_text_line = {} is below the RFC 5321 minimum of 1000",
                l.max_text_line
            ));
        }
        if l.max_recipients == 0 {
            return invalid(
                "[limits] max_recipients must be at least 1 (RFC 5321 asks for 100)".into(),
            );
        }
        if l.max_errors == 0 {
            return invalid("[limits] max_errors must be at least 1".into());
        }
        for domain in &self.relay.local_domains {
            let name = domain.strip_prefix('.').unwrap_or(domain);
            if name.is_empty() || name.contains(['@', ' ', '*']) {
                return invalid(format!(
                    "[relay] local_domains entry {domain:?}: write a domain (\"example.com\") or \
                     \".example.com\" for its subdomains"
                ));
            }
        }
        let c = &self.connections;
        if c.max_sessions == 0 {
            return invalid("[connections] max_sessions must be at least 1".into());
        }
        if c.client_prefix_v4 == 0 || c.client_prefix_v4 > 32 {
            return invalid(format!(
                "[connections] client_prefix_v4 = {} must be between 1 and 32",
                c.client_prefix_v4
            ));
        }
        if c.client_prefix_v6 == 0 || c.client_prefix_v6 > 128 {
            return invalid(format!(
                "[connections] client_prefix_v6 = {} must be between 1 and 128",
                c.client_prefix_v6
            ));
        }
        if c.rate.per_minute > 0 && c.rate.burst == 0 {
            return invalid(
                "[connections.rate] burst must be at least 1 when per_minute is set".into(),
            );
        }
        crate::stack::access_rules(&self.access).map_err(ConfigError::Invalid)?;
        if self.dnsbl.enabled {
            if self.dnsbl.zones.is_empty() {
                return invalid(
                    "[dnsbl] enabled with no zones: list them, e.g. zones = \
                     [\"zen.spamhaus.org=127.0.0.[2..11]*3\"]"
                        .into(),
                );
            }
            for zone in &self.dnsbl.zones {
                attitude_policy::dnsbl::Zone::parse(zone).map_err(ConfigError::Invalid)?;
            }
            if self.dnsbl.allowlist_threshold >= self.dnsbl.threshold {
                return invalid("[dnsbl] allowlist_threshold must be below threshold".into());
            }
        }
        let a = &self.auth;
        if a.enabled {
            for m in &a.mechanisms {
                if !attitude_service::auth::MECHANISMS.contains(&m.to_ascii_uppercase().as_str()) {
                    return invalid(format!(
                        "[auth] mechanisms: {m:?} cannot be relayed; use PLAIN and/or LOGIN"
                    ));
                }
            }
            if a.max_failures_per_client == 0 || a.max_failures_per_login == 0 {
                return invalid(
                    "[auth] max_failures_per_client and _per_login must be at least 1".into(),
                );
            }
        }
        if a.require && !a.enabled {
            return invalid(
                "[auth] require = true needs enabled = true (and a backend that offers AUTH)"
                    .into(),
            );
        }
        let p = &self.proxy_protocol;
        if p.enabled && p.sources.is_empty() {
            return invalid(
                "[proxy_protocol] enabled with no sources: set sources to the networks your load \
                 balancer connects from"
                    .into(),
            );
        }
        if self.timeouts.drain_delay > self.timeouts.drain_grace {
            return invalid(format!(
                "[timeouts] drain_delay ({:?}) must not be longer than drain_grace ({:?})",
                self.timeouts.drain_delay, self.timeouts.drain_grace
            ));
        }
        if self.dns.timeout.is_zero() {
            return invalid("[dns] timeout must be longer than 0".into());
        }
        if self.pregreet.enabled && self.pregreet.pause.is_zero() {
            return invalid("[pregreet] pause must be longer than 0 (e.g. \"6s\")".into());
        }
        let g = &self.greylist;
        if g.enabled {
            if g.retry_window <= g.delay {
                return invalid(format!(
                    "[greylist] retry_window ({:?}) must be longer than delay ({:?})",
                    g.retry_window, g.delay
                ));
            }
            if g.client_prefix_v4 == 0 || g.client_prefix_v4 > 32 {
                return invalid("[greylist] client_prefix_v4 must be between 1 and 32".into());
            }
            if g.client_prefix_v6 == 0 || g.client_prefix_v6 > 128 {
                return invalid("[greylist] client_prefix_v6 must be between 1 and 128".into());
            }
            if g.max_entries < 100 {
                return invalid("[greylist] max_entries must be at least 100".into());
            }
        }
        for rule in &self.content.header_checks {
            if let Err(e) = regex::Regex::new(&rule.pattern) {
                return invalid(format!(
                    "[[content.header_checks]] pattern {:?} is not a valid regular expression: {e}",
                    rule.pattern
                ));
            }
            if let Some(text) = &rule.text
                && (text.is_empty() || text.chars().any(|c| c.is_control() || !c.is_ascii()))
            {
                return invalid(format!(
                    "[[content.header_checks]] text {text:?} must be non-empty printable ASCII (it \
                     becomes an SMTP reply line)"
                ));
            }
        }
        if self.content.block_attachments && self.content.blocked_extensions.is_empty() {
            return invalid(
                "[content] blocked_extensions is empty while block_attachments = true: list \
                 extensions or set block_attachments = false"
                    .into(),
            );
        }
        if self.throttle.burst_bytes < 32 * 1024 {
            return invalid(format!(
                "[throttle] burst_bytes = {} must be at least 32768 (one DATA chunk)",
                self.throttle.burst_bytes
            ));
        }
        let mut names = std::collections::HashSet::new();
        for rule in &self.rates {
            let name = &rule.name;
            if name.is_empty() || !names.insert(name.as_str()) {
                return invalid(format!(
                    "[[rates]] name {name:?} must be non-empty and unique"
                ));
            }
            if rule.limit == 0 || rule.per.is_zero() || rule.burst == Some(0) {
                return invalid(format!(
                    "[[rates]] {name}: limit, per and burst must be greater than 0"
                ));
            }
            if rule.code != 450 && rule.code != 451 {
                return invalid(format!("[[rates]] {name}: code must be 450 or 451"));
            }
            if rule.key == RateKey::RcptDomain && rule.count != RateCount::Recipients {
                return invalid(format!(
                    "[[rates]] {name}: key = \"rcpt-domain\" needs count = \"recipients\""
                ));
            }
        }
        let t = &self.timeouts;
        for (name, value) in [
            ("command", t.command),
            ("data", t.data),
            ("backend_connect", t.backend_connect),
            ("backend_greeting", t.backend_greeting),
            ("backend_command", t.backend_command),
            ("backend_data", t.backend_data),
            ("backend_data_end", t.backend_data_end),
        ] {
            if value.is_zero() {
                return invalid(format!("[timeouts] {name} must be greater than 0"));
            }
        }
        Ok(())
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A file's text, or an error that names the file.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A TOML error in `text` (from `origin`), with the line and column it points at.
fn parse_error(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let (line, column) = e
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((1, 1));
    ConfigError::Parse {
        path: origin.to_owned(),
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Durations as `"90s"`, `"5m"`, `"1h"`, `"36d"`, `"250ms"` (or a bare number of seconds).
pub mod duration {
    use super::*;

    /// Parses a duration.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid duration {text:?}: expected e.g. \"30s\", \"5m\", \"250ms\"")
        })?;
        let seconds = match unit.trim() {
            "" | "s" => value,
            "ms" => value / 1000.0,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
                ));
            }
        };
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Formats a duration the way [`parse`] reads it.
    pub fn format(d: &Duration) -> String {
        let ms = d.as_millis();
        if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else {
            format!("{}s", ms / 1000)
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
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
}
