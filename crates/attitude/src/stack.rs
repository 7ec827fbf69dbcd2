//! The one place that knows every layer: builds the connection stack and, for each session,
//! the command stack.
//!
//! ```text
//! connection stack (Service<Connection>)      -> per-session command service, or a refusal
//! command stack    (Service<Request, Reply>)  =  SmtpMetrics -> Protocol -> Relay
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{BareLineEndings, CodecConfig, Reply};
use attitude_service::driver::{DriverConfig, DriverMetrics};
use attitude_service::metrics::{SmtpMetrics, SmtpMetricsLayer, SmtpMetricsService};
use attitude_service::protocol::{Protocol, ProtocolConfig, ProtocolLayer};
use attitude_service::relay::{Relay, RelayConfig, RelayMetrics, RelayShared};
use tower::{Layer, Service};

use crate::config::{self, Config};

/// The command stack of one session.
pub type CommandService = SmtpMetricsService<Protocol<Relay>>;

/// An accepted client connection, as the connection stack sees it.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// Session id.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
}

/// The connection stack refused a client: this reply is sent and the connection closed.
#[derive(Debug, Clone)]
pub struct Refused(pub Reply);

/// Everything shared by all sessions.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Session driver settings.
    pub driver: Arc<DriverConfig>,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
    protocol: ProtocolLayer,
    metrics: SmtpMetricsLayer,
    relay: Arc<RelayShared>,
}

impl Stack {
    /// Builds the stack from a validated configuration. Registers metric handles with the
    /// installed recorder.
    pub fn new(config: &Config) -> Self {
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
        };
        let protocol = ProtocolConfig {
            hostname: config.hostname.clone(),
            max_message_size: config.limits.max_message_size,
            max_recipients: config.limits.max_recipients,
        };
        let t = &config.timeouts;
        let relay = RelayConfig {
            backends: config.backend.servers.clone(),
            helo_name: config
                .backend
                .helo_name
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            connect_timeout: t.backend_connect,
            greeting_timeout: t.backend_greeting,
            command_timeout: t.backend_command,
            data_block_timeout: t.backend_data,
            data_end_timeout: t.backend_data_end,
            ..RelayConfig::default()
        };
        let relay_metrics = RelayMetrics::register(&relay.backends);
        Self {
            driver: Arc::new(driver),
            driver_metrics: DriverMetrics::register(),
            protocol: ProtocolLayer::new(protocol),
            metrics: SmtpMetricsLayer::new(SmtpMetrics::register()),
            relay: RelayShared::new(relay, relay_metrics),
        }
    }

    /// The command stack for one session.
    pub fn command_service(&self) -> CommandService {
        let relay = Relay::new(self.relay.clone());
        self.metrics.layer(self.protocol.layer(relay))
    }
}

impl Service<Connection> for Stack {
    type Response = CommandService;
    type Error = Refused;
    type Future = std::future::Ready<Result<CommandService, Refused>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _conn: Connection) -> Self::Future {
        std::future::ready(Ok(self.command_service()))
    }
}
