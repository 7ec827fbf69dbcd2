//! With `connection.rs`, the one place that knows every layer: builds, for each session, the
//! command stack.
//!
//! ```text
//! connection stack (connection.rs)            rate -> per-client sessions -> global cap -> session
//! command stack    (Service<Request, Reply>)  SmtpMetrics -> Tarpit -> Protocol -> AuthGuard
//!                                             -> Access
//!                                             -> RelayControl -> SPF -> Greylist
//!                                             -> Throttle -> [[rates]] -> Content -> Relay
//! ```

use std::sync::Arc;
use std::time::Duration;

use attitude_balance::{BackendCaps, CapsHook, Pool};
use attitude_codec::{BareLineEndings, CodecConfig, EnhancedStatus, Reply};
use attitude_layers::Rejection;
use attitude_layers::tarpit::{TarpitLayer, TarpitMetrics};
use attitude_layers::throttle::{ThrottleLayer, ThrottleMetrics};
use attitude_policy::Decisions;
use attitude_policy::access::{
    AccessAction, AccessConfig, AccessLayer, AccessRule, Field, Matcher,
};
use attitude_policy::auth_guard::{AuthGuardConfig, AuthGuardLayer};
use attitude_policy::content::{
    AttachmentRules, ByteBudget, ContentConfig, ContentLayer, HeaderAction, HeaderCheck,
};
use attitude_policy::greylist::{Greylist, GreylistConfig, GreylistLayer, Timing, system_clock};
use attitude_policy::spf::{SpfConfig, SpfLayer};
use attitude_service::auth::AuthOffer;
use attitude_service::driver::{DriverConfig, DriverMetrics};
use attitude_service::metrics::{SmtpMetrics, SmtpMetricsLayer, SmtpMetricsService};
use attitude_service::protocol::{ProtocolConfig, ProtocolLayer};
use attitude_service::relay::{Relay, RelayConfig, RelayMetrics, RelayShared};
use attitude_service::relay_control::{RelayControlConfig, RelayControlLayer, RelayControlMetrics};
use attitude_service::{BoxCommand, BoxError, Event, Request};
use hickory_resolver::TokioResolver;
use tower::Layer;

use attitude_edge::tls::ServerTls;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, EffectiveListener, ListenerTls};
use crate::keys::ClientKey;
use crate::rates;

/// Runs `housekeeping` once a minute until `stop` (a configuration replaced by a reload):
/// keyed limiters forget the keys that are back at full budget. Call it from within the main
/// runtime.
pub fn every_minute(stop: &CancellationToken, housekeeping: impl Fn() + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => housekeeping(),
            }
        }
    });
}

/// What every listener's stack shares, built once per process and kept across reloads: the
/// backend pool, the DNS resolver, the greylist store, the server certificate, and what the
/// backends offer for AUTH.
pub struct Shared {
    /// The backend pool.
    pub pool: Pool,
    /// The `[dns]` resolver, when a DNS policy or DNS discovery is on anywhere.
    pub resolver: Option<TokioResolver>,
    /// The greylist store, when any listener greylists.
    pub greylist: Option<Arc<Greylist>>,
    /// The server certificate (`[tls]`).
    pub tls: Option<Arc<ServerTls>>,
    /// The AUTH mechanisms the backends offer (learnt from every new backend connection).
    backend_auth: Arc<AuthOffer>,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
}

impl Shared {
    /// Builds the shared parts from the process configuration and its listeners.
    pub fn new(config: &Config, listeners: &[EffectiveListener]) -> Result<Self, String> {
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                let tls = Arc::new(ServerTls::load(cert, key, config.tls.handshake_timeout)?);
                if config.tls.watch {
                    tls.watch(Duration::from_millis(500))?;
                }
                Some(tls)
            }
            _ => None,
        };
        let backend_auth = Arc::new(AuthOffer::new(
            attitude_service::auth::MECHANISMS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            true,
        ));
        let on_caps: CapsHook = {
            let auth = backend_auth.clone();
            Arc::new(move |caps: &BackendCaps| auth.set_backend(caps.auth_mechanisms()))
        };
        let pool = Pool::new(config.pool_config()?, Some(on_caps));
        pool.set_source("static", config.static_backends());
        let mut shared = Self {
            pool,
            resolver: None,
            greylist: None,
            tls,
            backend_auth,
            driver_metrics: DriverMetrics::register(),
        };
        shared.provide(config, listeners)?;
        if let Some(resolver) = &shared.resolver {
            for source in config.dns_backends() {
                shared.pool.discover_dns(resolver.clone(), source);
            }
        }
        shared.pool.start();
        Ok(shared)
    }

    /// Creates the resolver and the greylist store once some listener needs them (at start,
    /// or when a reload turns on a DNS policy or greylisting).
    pub fn provide(
        &mut self,
        config: &Config,
        listeners: &[EffectiveListener],
    ) -> Result<(), String> {
        let any = |f: fn(&Config) -> bool| listeners.iter().any(|l| f(&l.config));
        // One resolver, with one cache, for every DNS policy (DNSBL and SPF).
        if self.resolver.is_none()
            && (any(|c| c.dnsbl.enabled || c.spf.enabled) || !config.backend.dns.is_empty())
        {
            let nameservers = &config.dns.nameservers;
            self.resolver = Some(attitude_policy::dns::resolver(
                (!nameservers.is_empty()).then_some(nameservers.as_slice()),
                config.dns.timeout,
            )?);
        }
        if self.greylist.is_none() && any(|c| c.greylist.enabled) {
            // The store's settings are the top level's, whichever listener turned it on.
            self.greylist = Some(greylist(config)?);
        }
        Ok(())
    }

    /// Saves what should survive a restart (the greylist). Call once sessions have ended.
    pub fn save_state(&self) {
        if let Some(greylist) = &self.greylist {
            greylist.save();
        }
    }
}

/// Wraps a command service in one policy's layer; the policies' state is shared by all sessions.
pub type CommandLayer = Arc<dyn Fn(BoxCommand) -> BoxCommand + Send + Sync>;

/// The command stack of one session: metrics, then (boxed) tarpit, protocol, policies, relay.
pub type CommandService = SmtpMetricsService<BoxCommand>;

/// Everything shared by all sessions.
#[derive(Clone)]
pub struct Stack {
    /// Session driver settings.
    pub driver: Arc<DriverConfig>,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
    protocol: ProtocolLayer,
    metrics: SmtpMetricsLayer,
    /// Relay control, throttle and rate rules, outermost first (between the protocol layer and
    /// the relay).
    policies: Vec<CommandLayer>,
    /// The tarpit, outside the protocol layer so it also holds replies to bad commands.
    tarpit: Option<CommandLayer>,
    /// The `[dns]` resolver, when a DNS policy is on (the connection stack's DNSBL uses it too).
    pub resolver: Option<TokioResolver>,
    /// The certificate for implicit TLS, on such a listener.
    pub implicit_tls: Option<Arc<ServerTls>>,
    /// Cancelled when a reload replaces this stack: its housekeeping tasks end.
    pub housekeeping: CancellationToken,
    relay: Arc<RelayShared>,
}

impl Stack {
    /// Builds one listener's stack from its validated configuration, over the shared parts.
    /// Registers metric handles with the installed recorder.
    pub fn new(
        listener: &EffectiveListener,
        shared: &Shared,
        housekeeping: CancellationToken,
    ) -> Self {
        let config = &listener.config;
        let codec = CodecConfig {
            max_command_line: config.limits.max_command_line,
            max_text_line: config.limits.max_text_line,
            bare_line_endings: match config.smtp.bare_line_endings {
                config::BareLineEndings::Reject => BareLineEndings::Reject,
                config::BareLineEndings::Normalize => BareLineEndings::Normalize,
            },
            ..CodecConfig::default()
        };
        let driver = DriverConfig {
            hostname: config.hostname.clone(),
            codec,
            command_timeout: config.timeouts.command,
            data_timeout: config.timeouts.data,
            min_data_rate: config.limits.min_data_rate,
            max_errors: config.limits.max_errors,
            tls: shared
                .tls
                .clone()
                .filter(|_| listener.tls == ListenerTls::Starttls),
        };
        let auth = config.auth.enabled.then(|| {
            Arc::new(
                shared.backend_auth.sharing_backend(
                    config
                        .auth
                        .mechanisms
                        .iter()
                        .map(|m| m.to_ascii_uppercase())
                        .collect(),
                    config.auth.allow_plaintext,
                ),
            )
        });
        let protocol = ProtocolConfig {
            hostname: config.hostname.clone(),
            max_message_size: config.limits.max_message_size,
            max_recipients: config.limits.max_recipients,
            auth: auth.clone(),
            require_auth: config.auth.require,
            require_tls: config.smtp.require_tls,
        };
        let t = &config.timeouts;
        let relay = RelayConfig {
            command_timeout: t.backend_command,
            data_block_timeout: t.backend_data,
            data_end_timeout: t.backend_data_end,
        };
        let c = &config.connections;
        let client = ClientKey::new(c.client_prefix_v4, c.client_prefix_v6, &c.exempt_networks);
        let greylist = shared.greylist.clone().filter(|_| config.greylist.enabled);
        let resolver = shared.resolver.clone();
        let relay = RelayShared::new(relay, shared.pool.clone(), RelayMetrics::register());
        let stop = &housekeeping;
        Self {
            driver: Arc::new(driver),
            driver_metrics: shared.driver_metrics.clone(),
            protocol: ProtocolLayer::new(protocol),
            metrics: SmtpMetricsLayer::new(SmtpMetrics::register()),
            tarpit: tarpit_layer(config),
            policies: auth_guard_layer(config)
                .into_iter()
                .chain(access_layer(config))
                .chain(std::iter::once(relay_control_layer(config)))
                .chain(spf_layer(config, resolver.as_ref()))
                .chain(greylist.clone().map(|greylist| {
                    let layer = GreylistLayer::new(greylist);
                    Arc::new(move |inner: BoxCommand| BoxCommand::new(layer.layer(inner)))
                        as CommandLayer
                }))
                .chain(throttle_layer(config, &client, stop))
                .chain(rates::layers(&config.rates, &client, stop))
                .chain(content_layer(config))
                .collect(),
            relay,
            resolver,
            implicit_tls: shared
                .tls
                .clone()
                .filter(|_| listener.tls == ListenerTls::Implicit),
            housekeeping,
        }
    }

    /// The command stack for one session.
    pub fn command_service(&self) -> CommandService {
        let mut inner = BoxCommand::new(Relay::new(self.relay.clone()));
        for policy in self.policies.iter().rev() {
            inner = policy(inner);
        }
        let mut protocol = BoxCommand::new(self.protocol.layer(inner));
        if let Some(tarpit) = &self.tarpit {
            protocol = tarpit(protocol);
        }
        self.metrics.layer(protocol)
    }
}

/// `[throttle]` as a command layer: DATA chunks cost their length.
fn throttle_layer(
    config: &Config,
    client: &ClientKey,
    stop: &CancellationToken,
) -> Option<CommandLayer> {
    let t = &config.throttle;
    if t.session_bytes_per_second == 0 && t.client_bytes_per_second == 0 {
        return None;
    }
    let client = client.clone();
    let layer = ThrottleLayer::new(
        t.session_bytes_per_second,
        t.client_bytes_per_second,
        t.burst_bytes,
        move |req: &Request| client.key(req.session.client.ip()),
        |req: &Request| match &req.event {
            Event::DataChunk(chunk) => u32::try_from(chunk.len()).unwrap_or(u32::MAX),
            _ => 0,
        },
    )
    .metrics(ThrottleMetrics {
        throttled: metrics::counter!("attitude_throttled_bytes_total"),
        delay_seconds: metrics::histogram!("attitude_throttle_delay_seconds"),
    });
    let housekeeping = layer.clone();
    every_minute(stop, move || housekeeping.housekeeping());
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// `[tarpit]` as a command layer: replies to commands wait once the session has made errors, or
/// once a policy marked the client suspicious.
fn tarpit_layer(config: &Config) -> Option<CommandLayer> {
    let t = config.tarpit.clone();
    if t.soft_error_limit == 0 && t.suspicious_delay.is_zero() {
        return None;
    }
    let delay = move |req: &Request| {
        if !matches!(req.event, Event::Command(_) | Event::Invalid(_)) {
            return Duration::ZERO;
        }
        let errors = req.session.errors;
        let for_errors = if t.soft_error_limit > 0 && errors >= t.soft_error_limit {
            (t.delay_per_error * (errors - t.soft_error_limit + 1)).min(t.max_delay)
        } else {
            Duration::ZERO
        };
        match req.session.marks.suspicious() {
            Some(_) => for_errors.max(t.suspicious_delay),
            None => for_errors,
        }
    };
    let refuse = |_req: Request, _why: Rejection| {
        std::future::ready(Ok::<_, BoxError>(Reply::new(
            421,
            EnhancedStatus::new(4, 7, 0),
            "Too many errors; closing connection",
        )))
    };
    let layer = TarpitLayer::new(config.tarpit.budget, delay, refuse).metrics(TarpitMetrics {
        held: metrics::counter!("attitude_tarpit_held_total", "stage" => "command"),
        delay_seconds: metrics::histogram!("attitude_tarpit_delay_seconds", "stage" => "command"),
        holding: metrics::gauge!("attitude_tarpit_holding", "stage" => "command"),
        over_budget: metrics::counter!("attitude_tarpit_over_budget_total", "stage" => "command"),
    });
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// `[content]` as a command layer, innermost: it sees only messages the other policies let
/// through, and refuses at end of data by aborting the relay's backend transaction.
fn content_layer(config: &Config) -> Option<CommandLayer> {
    let c = &config.content;
    let header_checks: Vec<HeaderCheck> = c
        .header_checks
        .iter()
        .map(|rule| {
            let action = match rule.action {
                config::HeaderCheckAction::Reject => HeaderAction::Reject,
                config::HeaderCheckAction::Defer => HeaderAction::Defer,
            };
            HeaderCheck::new(&rule.pattern, action, rule.text.as_deref())
                .expect("validated with the configuration")
        })
        .collect();
    let attachments = c
        .block_attachments
        .then(|| AttachmentRules::new(&c.blocked_extensions));
    if header_checks.is_empty() && attachments.is_none() {
        return None;
    }
    let layer = ContentLayer::new(ContentConfig {
        header_checks,
        attachments,
        max_message: usize::try_from(config.limits.max_message_size).unwrap_or(usize::MAX),
        budget: Arc::new(ByteBudget::new(
            c.buffer_budget,
            metrics::gauge!("attitude_content_buffered_bytes"),
        )),
        mode: c.mode.into(),
        header_decisions: Decisions::register("header"),
        attachment_decisions: Decisions::register("attachment"),
        over_budget: metrics::counter!("attitude_content_over_budget_total"),
    });
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// The rules of `[access]`, files read; an error says which rule and what to fix.
pub fn access_rules(config: &config::Access) -> Result<Vec<AccessRule>, String> {
    config
        .rules
        .iter()
        .enumerate()
        .map(|(n, rule)| {
            let name = format!("[[access.rules]] #{}", n + 1);
            let mut values = rule.values.clone();
            if let Some(path) = &rule.file {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{name}: cannot read file {}: {e}", path.display()))?;
                values.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            if values.is_empty() {
                return Err(format!("{name}: no values (set `values` or `file`)"));
            }
            let values = values.iter().map(String::as_str);
            let (field, matcher) = match rule.check {
                config::AccessField::Client => (Field::Client, Matcher::networks(values)),
                config::AccessField::Helo => (Field::Helo, Matcher::names(values)),
                config::AccessField::Sender => (Field::Sender, Matcher::addresses(values)),
                config::AccessField::Recipient => (Field::Recipient, Matcher::addresses(values)),
            };
            let matcher = matcher.map_err(|e| format!("{name}: {e}"))?;
            let action = match rule.action {
                config::AccessActionConfig::Allow => AccessAction::Allow,
                config::AccessActionConfig::Deny => AccessAction::Deny,
                config::AccessActionConfig::Skip
                    if matches!(field, Field::Client | Field::Helo) =>
                {
                    AccessAction::Skip
                }
                config::AccessActionConfig::Skip => {
                    return Err(format!(
                        "{name}: action \"skip\" exempts a whole session, so it is for client \
                         and helo rules; use \"allow\" for senders and recipients"
                    ));
                }
            };
            if let Some(text) = &rule.text
                && (text.is_empty() || text.chars().any(|c| c.is_control() || !c.is_ascii()))
            {
                return Err(format!(
                    "{name}: text {text:?} must be non-empty printable ASCII"
                ));
            }
            Ok(AccessRule {
                name,
                field,
                matcher,
                action,
                text: rule.text.clone(),
            })
        })
        .collect()
}

/// `[auth]`'s brute-force guard, first among the policies (it sees the AUTH exchanges the
/// protocol layer let through).
fn auth_guard_layer(config: &Config) -> Option<CommandLayer> {
    let a = &config.auth;
    if !a.enabled {
        return None;
    }
    let layer = AuthGuardLayer::new(AuthGuardConfig {
        max_failures_per_client: a.max_failures_per_client,
        max_failures_per_login: a.max_failures_per_login,
        window: a.window,
        ban: a.ban,
        failure_delay: a.failure_delay,
        prefix_v4: config.connections.client_prefix_v4,
        prefix_v6: config.connections.client_prefix_v6,
        max_entries: 100_000,
        enforce: a.mode == config::RuleMode::Enforce,
        decisions: Decisions::register("auth"),
        client_bans: metrics::counter!("attitude_auth_bans_total", "key" => "client"),
        login_bans: metrics::counter!("attitude_auth_bans_total", "key" => "login"),
    });
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// `[access]` as a command layer, first among the policies.
fn access_layer(config: &Config) -> Option<CommandLayer> {
    let rules = access_rules(&config.access).expect("validated with the configuration");
    if rules.is_empty() {
        return None;
    }
    let layer = AccessLayer::new(AccessConfig {
        rules,
        mode: config.access.mode.into(),
        decisions: Decisions::register("access"),
    });
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// `[spf]` as a command layer, after relay control (a relay attempt costs no DNS).
fn spf_layer(config: &Config, resolver: Option<&TokioResolver>) -> Option<CommandLayer> {
    let resolver = resolver.filter(|_| config.spf.enabled)?;
    let layer = SpfLayer::new(SpfConfig {
        resolver: resolver.clone(),
        hostname: config.hostname.clone(),
        reject_fail: config.spf.reject_fail,
        timeout: config.dns.timeout,
        trusted_networks: config.relay.trusted_networks.clone(),
        cache_ttl: config.spf.cache_ttl,
        max_cache: config.spf.max_cache,
        decisions: Decisions::register("spf"),
    });
    Some(Arc::new(move |inner: BoxCommand| {
        BoxCommand::new(layer.layer(inner))
    }))
}

/// The greylist store from `[greylist]`, loaded from its file.
fn greylist(config: &Config) -> Result<Arc<Greylist>, String> {
    let g = &config.greylist;
    Greylist::open(GreylistConfig {
        timing: Timing {
            delay: g.delay,
            retry_window: g.retry_window,
            pass_ttl: g.pass_ttl,
            allowlist_after: g.allowlist_after,
            allowlist_ttl: g.allowlist_ttl,
            max_entries: g.max_entries,
        },
        prefix_v4: g.client_prefix_v4,
        prefix_v6: g.client_prefix_v6,
        trusted_networks: config.relay.trusted_networks.clone(),
        file: g.file.clone(),
        mode: g.mode.into(),
        decisions: Decisions::register("greylist"),
        entries: metrics::gauge!("attitude_greylist_entries"),
        clock: system_clock(),
    })
    .map(Arc::new)
}

/// `[relay]` as a command layer: RCPT that would relay without permission gets 554 5.7.1.
fn relay_control_layer(config: &Config) -> CommandLayer {
    let r = &config.relay;
    let layer = RelayControlLayer::new(RelayControlConfig {
        local_domains: r
            .local_domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        trusted_networks: r.trusted_networks.clone(),
        mode: r.mode.into(),
        metrics: RelayControlMetrics::register(),
    });
    Arc::new(move |inner: BoxCommand| BoxCommand::new(layer.layer(inner)))
}
