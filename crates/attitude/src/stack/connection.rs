//! The connection stack: one call per accepted client, whose future is the whole session.
//!
//! ```text
//! rate per client ─► sessions per client ─► global session cap ─► DNSBL ─► pregreet
//!     ─► SessionService (driver)
//! ```
//! Because the response future is the session, a concurrency permit lives exactly as long as the
//! session. A refusal writes its SMTP reply and closes the connection (not a reset, not a hang in
//! the accept queue): at once for the global cap, after `[tarpit] refusal_delay` for a client over
//! its own limits (within a budget of held refusals).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attitude_codec::Reply;
use attitude_edge::Stream;
use attitude_layers::keyed_concurrency::KeyedConcurrencyLayer;
use attitude_layers::rate_limit::RateLimitLayer;
use attitude_layers::tarpit::{Tarpit, TarpitLayer, TarpitMetrics};
use attitude_layers::{Reject, Rejection};
use attitude_policy::dnsbl::{Dnsbl, DnsblConfig, DnsblLayer, Zone};
use attitude_policy::pregreet::{PregreetConfig, PregreetLayer};
use attitude_policy::{Accepted, Decisions};
use attitude_service::driver::{self, DriverMetrics, SessionResult, SessionSummary, Shutdown};
use attitude_service::{BoxFuture, Marks, Session, replies};
use futures::FutureExt;
use governor::Quota;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::util::BoxService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::{Shared, Stack, every_minute};
use crate::config::{self, Config};
use crate::keys::ClientKey;

/// An accepted client connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The socket.
    pub io: TcpStream,
    /// Session id.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// What the connection stack's policies concluded, handed on to the session.
    pub marks: Arc<Marks>,
}

/// The assembled connection stack.
pub(crate) type ConnectionService = BoxService<Connection, SessionSummary, Infallible>;

/// The innermost connection service: runs the SMTP session.
#[derive(Clone)]
struct SessionService {
    stack: Stack,
    shutdown: Shutdown,
}

impl Service<Connection> for SessionService {
    type Response = SessionSummary;
    type Error = Infallible;
    type Future = BoxFuture<Result<SessionSummary, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: Connection) -> Self::Future {
        // Socket options and the local address only for admitted sessions: a refusal under a
        // flood should cost as few system calls as possible.
        let _ = conn.io.set_nodelay(true);
        let local = conn.io.local_addr().unwrap_or(conn.client);
        let mut session = Session::new(conn.id, conn.client, local);
        session.marks = conn.marks;
        let service = self.stack.command_service();
        let config = self.stack.driver.clone();
        session.starttls = config.tls.is_some();
        let metrics = self.stack.driver_metrics.clone();
        let shutdown = self.shutdown.clone();
        let implicit = self.stack.implicit_tls.clone();
        let Some(tls) = implicit else {
            // The session's future is the driver's own: nothing around it.
            let io = Stream::Plain(conn.io);
            return Box::pin(
                driver::drive(io, session, service, config, shutdown, metrics).map(Ok),
            );
        };
        Box::pin(async move {
            // Implicit TLS (port 465): the handshake comes before the greeting. Boxed, as the
            // STARTTLS one: not part of the session's own future.
            let io = match Box::pin(tls.accept(conn.io)).await {
                Ok(stream) => {
                    session.tls = stream.tls_info();
                    if let Some(info) = &session.tls {
                        metrics.record_tls(info);
                    }
                    stream
                }
                Err(error) => {
                    tracing::debug!(target: "attitude::session", session = conn.id, client = %conn.client, %error, "TLS handshake failed");
                    metrics.record_unstarted(SessionResult::IoError);
                    return Ok(SessionSummary::unstarted(SessionResult::IoError, 0));
                }
            };
            let session = driver::drive(io, session, service, config, shutdown, metrics);
            Ok(Box::pin(session).await)
        })
    }
}

/// A connection to refuse: the reply it gets, and how long it waits for it.
struct Refusal {
    conn: Connection,
    reply: Reply,
    hold: Duration,
}

/// Writes a refusal's reply and closes the connection.
#[derive(Clone)]
struct Answer {
    metrics: Arc<DriverMetrics>,
}

impl Service<Refusal> for Answer {
    type Response = SessionSummary;
    type Error = Infallible;
    type Future = BoxFuture<Result<SessionSummary, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, refusal: Refusal) -> Self::Future {
        let metrics = self.metrics.clone();
        // All in the future: the tarpit around this service holds the future, not the call.
        Box::pin(async move {
            let Refusal { conn, reply, .. } = refusal;
            let mut io = conn.io;
            let wire = reply.to_wire();
            // Closing after the reply sends it with a FIN; no separate shutdown call.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), io.write_all(wire.as_bytes())).await;
            drop(io);
            metrics.record_refused();
            // Refusals come in floods: counted in metrics, logged only at debug level.
            tracing::debug!(target: "attitude::session", session = conn.id, client = %conn.client, reply = %reply, "session refused");
            Ok(SessionSummary::unstarted(
                SessionResult::Refused,
                wire.len() as u64,
            ))
        })
    }
}

/// Over the refusal budget, the reply goes out at once.
impl Reject<Refusal> for Answer {
    type Response = SessionSummary;
    type Error = Infallible;
    type Future = BoxFuture<Result<SessionSummary, Infallible>>;

    fn reject(&self, refusal: Refusal, _why: Rejection) -> Self::Future {
        self.clone().call(refusal)
    }
}

fn refusal_hold(refusal: &Refusal) -> Duration {
    refusal.hold
}

/// How refusals are answered: the 421, then close; a client over its own limits first waits
/// `[tarpit] refusal_delay`, within `refusal_budget` (the generic tarpit layer, around [`Answer`]).
#[derive(Clone)]
struct Refuse {
    answer: Tarpit<Answer, fn(&Refusal) -> Duration, Answer>,
    delay: Duration,
    /// Stress mode, and the delay under it (the shorter of the two applies).
    stress: Option<(Arc<attitude_service::driver::Stress>, Duration)>,
}

impl Refuse {
    fn new(
        metrics: Arc<DriverMetrics>,
        tarpit: &config::Tarpit,
        stress: Option<(Arc<attitude_service::driver::Stress>, Duration)>,
    ) -> Self {
        let answer = Answer { metrics };
        let layer = TarpitLayer::new(
            tarpit.refusal_budget,
            refusal_hold as fn(&Refusal) -> Duration,
            answer.clone(),
        )
        .metrics(TarpitMetrics {
            held: metrics::counter!("attitude_tarpit_held_total", "stage" => "refusal"),
            delay_seconds: metrics::histogram!("attitude_tarpit_delay_seconds", "stage" => "refusal"),
            holding: metrics::gauge!("attitude_tarpit_holding", "stage" => "refusal"),
            over_budget: metrics::counter!("attitude_tarpit_over_budget_total", "stage" => "refusal"),
            would_hold: metrics::counter!("attitude_tarpit_would_hold_total", "stage" => "refusal"),
        })
        .mode(tarpit.mode);
        Self {
            answer: layer.layer(answer),
            delay: tarpit.refusal_delay,
            stress,
        }
    }

    /// A rejection that answers `reply`, at once (`held` false) or after the refusal delay.
    fn with(
        &self,
        reply: fn() -> Reply,
        held: bool,
    ) -> impl Fn(Connection, Rejection) -> BoxFuture<Result<SessionSummary, Infallible>> + Clone + use<>
    {
        let refuse = self.clone();
        move |conn, _| refuse.answer(conn, reply(), held)
    }

    fn answer(
        &self,
        conn: Connection,
        reply: Reply,
        held: bool,
    ) -> BoxFuture<Result<SessionSummary, Infallible>> {
        let hold = match (&self.stress, held) {
            (_, false) => Duration::ZERO,
            (Some((stress, under)), true) if stress.is_on() => self.delay.min(*under),
            (_, true) => self.delay,
        };
        // `Answer` is always ready, and so is the tarpit around it.
        Box::pin(self.answer.clone().oneshot(Refusal { conn, reply, hold }))
    }
}

impl Accepted for Connection {
    fn client(&self) -> std::net::IpAddr {
        self.client.ip()
    }

    fn stream(&mut self) -> &mut TcpStream {
        &mut self.io
    }

    fn marks(&self) -> &Marks {
        &self.marks
    }
}

/// `[dnsbl]`, before pregreet: a listed client is refused before any pause.
fn dnsbl_layer(
    config: &Config,
    stack: &Stack,
    shared: &Shared,
) -> Result<Option<DnsblLayer>, String> {
    let d = &config.dnsbl;
    let Some(resolver) = stack.resolver.clone().filter(|_| d.enabled) else {
        return Ok(None);
    };
    let zones = d
        .zones
        .iter()
        .map(|z| Zone::parse(z))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let cache = shared.state.dnsbl_cache(&d.zones);
    let dnsbl = Dnsbl::sharing(
        DnsblConfig {
            zones,
            threshold: d.threshold,
            allowlist_threshold: d.allowlist_threshold,
            resolver,
            timeout: config.dns.timeout,
            cache_ttl: d.cache_ttl,
            max_cache: d.max_cache,
            mode: d.mode,
            decisions: Decisions::register("dnsbl"),
            sessions: stack.driver_metrics.clone(),
            fleet: shared.state.dnsbl_verdicts(&d.zones),
        },
        cache,
    );
    Ok(Some(DnsblLayer::new(Arc::new(dnsbl))))
}

/// `[pregreet]`, innermost: the pause holds the session's slot, as the session would.
fn pregreet_layer(config: &Config, stack: &Stack, shared: &Shared) -> Option<PregreetLayer> {
    let p = &config.pregreet;
    // On an implicit-TLS listener the client speaks first (its ClientHello): no pregreet.
    (p.enabled && stack.implicit_tls.is_none()).then(|| {
        PregreetLayer::sharing(
            PregreetConfig {
                pause: p.pause,
                multiline: p.multiline,
                hostname: config.hostname.clone(),
                action: p.action,
                pass_ttl: p.pass_ttl,
                fail_ttl: p.fail_ttl,
                max_entries: p.max_entries,
                skip_networks: config.relay.trusted_networks.clone(),
                mode: p.mode,
                decisions: Decisions::register("pregreet"),
                sessions: stack.driver_metrics.clone(),
                fleet: shared.state.verdicts("pregreet"),
                stress: config
                    .stress
                    .enabled
                    .then(|| (shared.stress.stress.clone(), config.stress.pregreet_pause)),
            },
            shared.state.pregreet.clone(),
        )
    })
}

/// Builds the connection stack's layers from `[connections]` once, and returns a factory of
/// connection services: one per accept thread, all sharing the limits' state.
pub(crate) fn build(
    full: &Config,
    stack: Stack,
    shared: &Shared,
    shutdown: Shutdown,
) -> Result<impl Fn() -> ConnectionService + Send + Sync + 'static, String> {
    let config = &full.connections;
    let stress = full
        .stress
        .enabled
        .then(|| (shared.stress.stress.clone(), full.stress.refusal_delay));
    let refuse = Refuse::new(stack.driver_metrics.clone(), &full.tarpit, stress);
    let pregreet = pregreet_layer(full, &stack, shared);
    let dnsbl = dnsbl_layer(full, &stack, shared)?;
    let stop = stack.housekeeping.clone();
    let client = ClientKey::new(
        config.client_prefix_v4,
        config.client_prefix_v6,
        &config.exempt_networks,
    );
    let session = SessionService { stack, shutdown };

    // The session counts are the process's (every listener, every configuration generation);
    // each listener applies its own limits to them.
    let global = KeyedConcurrencyLayer::with_state(
        shared.state.sessions.clone(),
        config.max_sessions,
        |_: &Connection| Some(()),
        refuse.with(replies::too_many_connections, false),
    )
    .mode(config.max_sessions_mode);
    let per_client = (config.per_client.limit > 0).then(|| {
        let key = client.clone();
        KeyedConcurrencyLayer::with_state(
            shared.state.per_client.clone(),
            config.per_client.limit,
            move |conn: &Connection| key.key(conn.client.ip()),
            refuse.with(replies::too_many_connections_from_network, true),
        )
        .mode(config.per_client.mode)
    });

    let rate = (config.rate.per_minute > 0).then(|| {
        let quota =
            Quota::per_minute(NonZeroU32::new(config.rate.per_minute).expect("checked > 0"))
                .allow_burst(NonZeroU32::new(config.rate.burst.max(1)).expect("at least 1"));
        let key = client;
        let state = shared
            .state
            .connection_rate(quota, config.max_tracked_clients);
        let layer = RateLimitLayer::with_state(
            state,
            move |conn: &Connection| key.key(conn.client.ip()),
            move |conn: Connection, rejection: Rejection| {
                let reply = replies::connection_rate_exceeded(rejection.retry_after);
                refuse.answer(conn, reply, true)
            },
        )
        .mode(config.rate.mode);
        let housekeeping = layer.clone();
        every_minute(&stop, move || housekeeping.housekeeping());
        layer
    });

    // One box for the whole stack: optional layers are `Either`s, not boxes of their own (every
    // session carries its connection stack's future, and idle sessions are what floods are made of).
    Ok(move || {
        BoxService::new(
            ServiceBuilder::new()
                .option_layer(rate.clone())
                .option_layer(per_client.clone())
                .layer(global.clone())
                .option_layer(dnsbl.clone())
                .option_layer(pregreet.clone())
                .service(session.clone()),
        )
    })
}
