//! The command stack: one per session, `Service<Request, Response = Reply>`, built from one
//! listener's configuration. In the order a command flows:
//!
//! ```text
//! SmtpMetrics ─► Tarpit ─► Protocol ─► AuthGuard ─► Access ─► RelayControl ─► SPF ─► Greylist
//!   ─► Throttle ─► [[rates]] ─► Content ─► Scan (scan.rs) ─► Relay (backend.rs)
//! ```
//!
//! Metrics see everything; the tarpit, outside the protocol layer, also holds replies to bad
//! commands; the policies inside the protocol layer see only well-ordered envelope events. Each
//! optional layer is built once per listener (its state shared by all sessions) and boxed per
//! session ([`CommandLayer`]): which layers a stack has is a matter of configuration.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use attitude_balance::{Offer, Pool};
use attitude_codec::{CodecConfig, Command, Reply};
use attitude_edge::tls::ServerTls;
use attitude_layers::rate_limit::RateLimitLayer;
use attitude_layers::tarpit::{TarpitLayer, TarpitMetrics};
use attitude_layers::throttle::{ThrottleLayer, ThrottleMetrics};
use attitude_layers::{LimitMetrics, Rejection};
use attitude_policy::Decisions;
use attitude_policy::access::{AccessConfig, AccessLayer};
use attitude_policy::auth_guard::{AuthGuardConfig, AuthGuardLayer, AuthGuardState};
use attitude_policy::content::{
    AttachmentRules, ByteBudget, ContentConfig, ContentLayer, HeaderCheck,
};
use attitude_policy::greylist::{Greylist, GreylistConfig, GreylistLayer, Timing, system_clock};
use attitude_policy::relay_control::{RelayControlConfig, RelayControlLayer, RelayControlMetrics};
use attitude_policy::spf::{SpfConfig, SpfLayer};
use attitude_service::address::{domain_of, normalize_address, normalize_domain};
use attitude_service::driver::{DriverConfig, DriverMetrics, StressLimits};
use attitude_service::metrics::{SmtpMetrics, SmtpMetricsLayer, SmtpMetricsService};
use attitude_service::protocol::{BackendOffer, ProtocolConfig, ProtocolLayer};
use attitude_service::relay::{Relay, RelayShared};
use attitude_service::{BoxCommand, BoxError, Event, Request, replies};
use governor::Quota;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::fleet::Fleet;
use super::{Shared, backend, every_minute};
use crate::config::{
    Config, EffectiveListener, ListenerTls, RateCount, RateKey, RateRule, Unrouted,
};
use crate::keys::ClientKey;

/// Wraps a command service in one policy's layer; the policies' state is shared by all sessions.
pub(crate) type CommandLayer = Arc<dyn Fn(BoxCommand) -> BoxCommand + Send + Sync>;

/// The command stack of one session: metrics, then (boxed) tarpit, protocol, policies, relay.
pub(crate) type CommandService = SmtpMetricsService<BoxCommand>;

/// `layer` as a [`CommandLayer`]: each session's service is boxed, so that every stack has one
/// type whatever the configuration turned on.
fn boxed<L>(layer: L) -> CommandLayer
where
    L: Layer<BoxCommand> + Send + Sync + 'static,
    L::Service: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    Arc::new(move |inner: BoxCommand| BoxCommand::new(layer.layer(inner)))
}

/// One listener's stack: what its sessions share, built once per configuration.
#[derive(Clone)]
pub(crate) struct Stack {
    /// Session driver settings.
    pub driver: Arc<DriverConfig>,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
    metrics: SmtpMetricsLayer,
    /// The tarpit, outside the protocol layer so it also holds replies to bad commands.
    tarpit: Option<CommandLayer>,
    protocol: ProtocolLayer,
    /// The policies between the protocol layer and the relay, outermost first.
    policies: Vec<CommandLayer>,
    relay: Arc<RelayShared>,
    /// The `[dns]` resolver, when a DNS policy is on (the connection stack's DNSBL uses it too).
    pub resolver: Option<TokioResolver>,
    /// The certificate for implicit TLS, on such a listener.
    pub implicit_tls: Option<Arc<ServerTls>>,
    /// Cancelled when a reload replaces this stack: its housekeeping tasks end.
    pub housekeeping: CancellationToken,
}

impl Stack {
    /// Builds one listener's stack from its validated configuration, over the shared parts.
    /// Registers metric handles with the installed recorder.
    pub(crate) fn new(
        listener: &EffectiveListener,
        shared: &Shared,
        housekeeping: CancellationToken,
    ) -> Result<Self, String> {
        let config = &listener.config;
        let pools = backend::reachable(config, &shared.pools)?;
        let routes = backend::routes(config)?;
        let c = &config.connections;
        let client = ClientKey::new(c.client_prefix_v4, c.client_prefix_v6, &c.exempt_networks);
        let resolver = shared.resolver.clone();
        let greylist = shared.greylist.clone().filter(|_| config.greylist.enabled);
        let stop = &housekeeping;
        // Message copies held at once, by the content checks and the scanners together.
        let budget = Arc::new(ByteBudget::new(
            config.content.buffer_budget,
            metrics::gauge!("attitude_content_buffered_bytes"),
        ));
        let relay_control = relay_control(config);
        let rates: Vec<CommandLayer> = config
            .rates
            .iter()
            .map(|rule| rate(rule, &client, shared, stop))
            .collect();
        // What an envelope a milter changed must pass again: relay control and the rates (the
        // same layers, the same budgets); the relay applies the routes.
        let recheck: Vec<CommandLayer> = std::iter::once(relay_control.clone())
            .chain(rates.iter().cloned())
            .collect();
        let policies = auth_guard(
            config,
            &shared.state.auth_guard,
            shared.state.fleet.as_ref(),
        )
        .into_iter()
        .chain(access(config))
        .chain(Some(relay_control))
        .chain(spf(config, resolver.as_ref()))
        .chain(greylist.map(|store| {
            let layer = GreylistLayer::new(store);
            boxed(match &routes {
                Some(routes) => layer.exempting({
                    let routes = routes.clone();
                    Arc::new(move |rcpt| routes.greylist_exempt(rcpt))
                }),
                None => layer,
            })
        }))
        .chain(throttle(config, &client, stop))
        .chain(rates)
        .chain(content(config, &budget))
        .chain(super::scan::scan(config, &budget).map(boxed))
        .chain(super::milter::milters(config, &listener.name, &budget, recheck).map(boxed))
        .collect();
        let protocol = protocol(config, shared, offered(config, &pools));
        Ok(Self {
            driver: Arc::new(driver(listener, shared)),
            driver_metrics: shared.driver_metrics.clone(),
            metrics: SmtpMetricsLayer::new(SmtpMetrics::register()),
            tarpit: tarpit(config),
            protocol,
            policies,
            relay: backend::relay(config, pools, routes),
            resolver,
            implicit_tls: shared
                .tls
                .clone()
                .filter(|_| listener.tls == ListenerTls::Implicit),
            housekeeping,
        })
    }

    /// The command stack for one session.
    pub(crate) fn command_service(&self) -> CommandService {
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

/// The session driver's settings: the decoder's limits, timeouts, STARTTLS.
fn driver(listener: &EffectiveListener, shared: &Shared) -> DriverConfig {
    let config = &listener.config;
    DriverConfig {
        hostname: config.hostname.clone(),
        codec: CodecConfig {
            max_command_line: config.limits.max_command_line,
            max_text_line: config.limits.max_text_line,
            bare_line_endings: config.smtp.bare_line_endings,
            long_lines: config.smtp.long_lines,
            ..CodecConfig::default()
        },
        command_timeout: config.timeouts.command,
        data_timeout: config.timeouts.data,
        min_data_rate: config.limits.min_data_rate,
        max_errors: config.limits.max_errors,
        junk_command_limit: config.limits.junk_command_limit,
        tls: shared
            .tls
            .clone()
            .filter(|_| listener.tls == ListenerTls::Starttls),
        stress: config.stress.enabled.then(|| {
            let s = &config.stress;
            (
                shared.stress.stress.clone(),
                StressLimits {
                    command_timeout: s.command_timeout,
                    data_timeout: s.data_timeout,
                    min_data_rate: s.min_data_rate,
                    max_errors: s.max_errors,
                    junk_command_limit: s.junk_command_limit,
                    exempt: config.relay.trusted_networks.clone(),
                },
            )
        }),
    }
}

/// `[tarpit]`: replies to commands wait once the session has made errors, or once a policy
/// marked the client suspicious.
fn tarpit(config: &Config) -> Option<CommandLayer> {
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
        std::future::ready(Ok::<_, BoxError>(replies::too_many_errors()))
    };
    let layer = TarpitLayer::new(config.tarpit.budget, delay, refuse).metrics(TarpitMetrics {
        held: metrics::counter!("attitude_tarpit_held_total", "stage" => "command"),
        delay_seconds: metrics::histogram!("attitude_tarpit_delay_seconds", "stage" => "command"),
        holding: metrics::gauge!("attitude_tarpit_holding", "stage" => "command"),
        over_budget: metrics::counter!("attitude_tarpit_over_budget_total", "stage" => "command"),
        would_hold: metrics::counter!("attitude_tarpit_would_hold_total", "stage" => "command"),
    })
    .mode(config.tarpit.mode);
    Some(boxed(layer))
}

/// RFC 5321 sequencing, the EHLO reply and local answers; AUTH and TLS requirements.
/// What a listener may offer: what every usable backend of the pools its mail reaches offered
/// (the default pool's only when unrouted recipients go there).
fn offered(config: &Config, pools: &[Pool]) -> BackendOffer {
    let skip = usize::from(config.routing.unrouted == Unrouted::Reject && pools.len() > 1);
    let pools = pools[skip..].to_vec();
    BackendOffer::new(move || Offer::of(pools.iter().flat_map(Pool::usable_caps)))
}

fn protocol(config: &Config, shared: &Shared, backends: BackendOffer) -> ProtocolLayer {
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
    ProtocolLayer::new(ProtocolConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size,
        max_recipients: config.limits.max_recipients,
        auth,
        require_auth: config.auth.require,
        require_tls: config.smtp.require_tls,
        backends: Some(backends),
        size_headroom: config.limits.size_headroom,
        requiretls: config.requiretls_possible(),
    })
}

/// `[auth]`'s brute-force guard, first among the policies (it sees the AUTH exchanges the
/// protocol layer let through), over the process's counts and bans (`state`).
fn auth_guard(
    config: &Config,
    state: &Arc<AuthGuardState>,
    fleet: Option<&Fleet>,
) -> Option<CommandLayer> {
    let a = &config.auth;
    if !a.enabled {
        return None;
    }
    Some(boxed(AuthGuardLayer::sharing(
        AuthGuardConfig {
            max_failures_per_client: a.max_failures_per_client,
            max_failures_per_login: a.max_failures_per_login,
            window: a.window,
            ban: a.ban,
            failure_delay: a.failure_delay,
            prefix_v4: config.connections.client_prefix_v4,
            prefix_v6: config.connections.client_prefix_v6,
            max_entries: 100_000,
            mode: a.mode,
            decisions: Decisions::register("auth"),
            client_bans: metrics::counter!("attitude_auth_bans_total", "key" => "client"),
            login_bans: metrics::counter!("attitude_auth_bans_total", "key" => "login"),
            fleet: fleet.map(|f| f.policies.clone()),
        },
        state.clone(),
    )))
}

/// `[access]`: allow, deny and skip rules on client, HELO, sender and recipient.
fn access(config: &Config) -> Option<CommandLayer> {
    let rules = config
        .access
        .rules()
        .expect("validated with the configuration");
    if rules.is_empty() {
        return None;
    }
    Some(boxed(AccessLayer::new(AccessConfig {
        rules,
        mode: config.access.mode,
        decisions: Decisions::register("access"),
    })))
}

/// `[relay]`: RCPT that would relay without permission gets 554 5.7.1. Before throttle and
/// rates, so a refused relay attempt costs no rate budget.
fn relay_control(config: &Config) -> CommandLayer {
    let r = &config.relay;
    boxed(RelayControlLayer::new(RelayControlConfig {
        local_domains: r
            .local_domains
            .iter()
            .map(|d| match d.strip_prefix('.') {
                Some(parent) => format!(".{}", normalize_domain(parent)),
                None => normalize_domain(d),
            })
            .collect(),
        trusted_networks: r.trusted_networks.clone(),
        allow_routing: r.allow_routing,
        mode: r.mode,
        metrics: RelayControlMetrics::register(),
    }))
}

/// `[spf]`, after relay control (a relay attempt costs no DNS).
fn spf(config: &Config, resolver: Option<&TokioResolver>) -> Option<CommandLayer> {
    let resolver = resolver.filter(|_| config.spf.enabled)?;
    Some(boxed(SpfLayer::new(SpfConfig {
        resolver: resolver.clone(),
        hostname: config.hostname.clone(),
        mode: config.spf.mode(),
        timeout: config.dns.timeout,
        trusted_networks: config.relay.trusted_networks.clone(),
        cache_ttl: config.spf.cache_ttl,
        max_cache: config.spf.max_cache,
        decisions: Decisions::register("spf"),
    })))
}

/// The greylist store from `[greylist]`, loaded from its file (one per process: see
/// `Shared::provide`).
pub(super) fn greylist_store(
    config: &Config,
    fleet: Option<&Fleet>,
) -> Result<Arc<Greylist>, String> {
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
        mode: g.mode,
        decisions: Decisions::register("greylist"),
        entries: metrics::gauge!("attitude_greylist_entries"),
        clock: system_clock(),
        fleet: fleet.map(|f| f.greylist.clone()),
        on_error: config.state.greylist_on_error,
        store_errors: metrics::counter!("attitude_greylist_store_errors_total"),
    })
    .map(Arc::new)
    .map_err(|e| e.to_string())
}

/// `[throttle]`: DATA chunks cost their length; the sender waits, nothing is refused.
fn throttle(config: &Config, client: &ClientKey, stop: &CancellationToken) -> Option<CommandLayer> {
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
        would_throttle: metrics::counter!("attitude_throttle_would_delay_bytes_total"),
    })
    .mode(t.mode);
    let housekeeping = layer.clone();
    every_minute(stop, move || housekeeping.housekeeping());
    Some(boxed(layer))
}

/// One `[[rates]]` rule: a generic rate-limit layer counting messages (at MAIL) or recipients
/// (at RCPT). Over the rate: `450 4.7.1` (or 451) with a hint of when to try again. Its
/// buckets are the process's, by rule name (`stack::state`): a reload or a second
/// listener naming the rule keeps counting where it was.
fn rate(
    rule: &RateRule,
    client: &ClientKey,
    shared: &Shared,
    stop: &CancellationToken,
) -> CommandLayer {
    let per_cell = rule.per / rule.limit;
    let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(rule.burst.unwrap_or(rule.limit)).expect("checked > 0"));
    let what = match rule.count {
        RateCount::Messages => "Message",
        RateCount::Recipients => "Recipient",
    };
    let code = rule.code;
    let keyed = rule.clone();
    let client = client.clone();
    let state = shared.state.rate(&rule.name, quota, rule.max_keys, || {
        LimitMetrics::register(
            "attitude_limit",
            "rate",
            &rule.name,
            rate_key_label(rule.key),
        )
    });
    let layer = RateLimitLayer::with_state(
        state,
        move |req: &Request| rate_key(&keyed, &client, req),
        move |_req: Request, why: Rejection| {
            let reply = replies::rate_limited(code, what, &why.rule, why.retry_after);
            std::future::ready(Ok::<_, BoxError>(reply))
        },
    )
    .mode(rule.mode);
    let housekeeping = layer.clone();
    every_minute(stop, move || housekeeping.housekeeping());
    boxed(layer)
}

/// The key of the null sender in `sender` and `sender-domain` rules.
const NULL_SENDER: &str = "<>";
/// The key of senders without a domain in `sender-domain` rules.
const NO_DOMAIN: &str = "<no-domain>";

/// What a rate rule counts this request by; `None`: not counted.
fn rate_key(rule: &RateRule, client: &ClientKey, req: &Request) -> Option<String> {
    let (mail, rcpt) = match (&req.event, rule.count) {
        (Event::Command(Command::Mail(mail)), RateCount::Messages) => (&mail.address, None),
        (Event::Command(Command::Rcpt(rcpt)), RateCount::Recipients) => (
            &req.session.transaction.as_ref()?.mail.address,
            Some(&rcpt.address),
        ),
        _ => return None,
    };
    match rule.key {
        RateKey::Client => client.key(req.session.client.ip()).map(|ip| ip.to_string()),
        // The null sender (bounces, and what passes for them) is counted under `<>`, and
        // `sender-domain` counts senders without a domain (`<postmaster>`) under `<no-domain>`:
        // no sender escapes a sender rule.
        RateKey::Sender if mail.is_empty() => Some(NULL_SENDER.to_owned()),
        RateKey::Sender => Some(normalize_address(mail)),
        RateKey::SenderDomain if mail.is_empty() => Some(NULL_SENDER.to_owned()),
        RateKey::SenderDomain => domain_of(mail).or_else(|| Some(NO_DOMAIN.to_owned())),
        RateKey::AuthUser => req.session.auth.clone(),
        RateKey::RcptDomain => rcpt.and_then(|r| domain_of(r)),
    }
}

fn rate_key_label(key: RateKey) -> &'static str {
    match key {
        RateKey::Client => "client",
        RateKey::Sender => "sender",
        RateKey::SenderDomain => "sender-domain",
        RateKey::AuthUser => "auth-user",
        RateKey::RcptDomain => "rcpt-domain",
    }
}

/// `[content]`, innermost: it sees only messages the other policies let through, and refuses
/// at end of data by aborting the relay's backend transaction.
fn content(config: &Config, budget: &Arc<ByteBudget>) -> Option<CommandLayer> {
    let c = &config.content;
    let header_checks: Vec<HeaderCheck> = c
        .header_checks
        .iter()
        .map(|rule| {
            HeaderCheck::new(&rule.pattern, rule.action, rule.text.as_deref())
                .expect("validated with the configuration")
        })
        .collect();
    let attachments = c
        .block_attachments
        .then(|| AttachmentRules::new(&c.blocked_extensions));
    if header_checks.is_empty() && attachments.is_none() {
        return None;
    }
    Some(boxed(ContentLayer::new(ContentConfig {
        header_checks,
        attachments,
        max_message: usize::try_from(config.limits.max_message_size).unwrap_or(usize::MAX),
        budget: budget.clone(),
        mode: c.mode,
        header_decisions: Decisions::register("header"),
        attachment_decisions: Decisions::register("attachment"),
        over_budget: metrics::counter!("attitude_content_over_budget_total"),
    })))
}
