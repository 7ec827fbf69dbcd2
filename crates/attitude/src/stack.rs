//! With `connection.rs`, the one place that knows every layer: builds, for each session, the
//! command stack.
//!
//! ```text
//! connection stack (connection.rs)            rate -> per-client sessions -> global cap -> session
//! command stack    (Service<Request, Reply>)  SmtpMetrics -> Protocol -> Relay
//! ```

use std::sync::Arc;

use attitude_codec::{BareLineEndings, CodecConfig};
use attitude_service::BoxCommand;
use attitude_service::driver::{DriverConfig, DriverMetrics};
use attitude_service::metrics::{SmtpMetrics, SmtpMetricsLayer, SmtpMetricsService};
use attitude_service::protocol::{Protocol, ProtocolConfig, ProtocolLayer};
use attitude_service::relay::{Relay, RelayConfig, RelayMetrics, RelayShared};
use tower::Layer;

use crate::config::{self, Config};
use crate::keys::ClientKey;
use crate::rates::{self, CommandLayer};

/// The command stack of one session.
pub type CommandService = SmtpMetricsService<Protocol<BoxCommand>>;

/// Everything shared by all sessions.
#[derive(Clone)]
pub struct Stack {
    /// Session driver settings.
    pub driver: Arc<DriverConfig>,
    /// Session metric handles.
    pub driver_metrics: Arc<DriverMetrics>,
    protocol: ProtocolLayer,
    metrics: SmtpMetricsLayer,
    rates: Vec<CommandLayer>,
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
        let c = &config.connections;
        let client = ClientKey::new(c.client_prefix_v4, c.client_prefix_v6, &c.exempt_networks);
        Self {
            driver: Arc::new(driver),
            driver_metrics: DriverMetrics::register(),
            protocol: ProtocolLayer::new(protocol),
            metrics: SmtpMetricsLayer::new(SmtpMetrics::register()),
            rates: rates::layers(&config.rates, &client),
            relay: RelayShared::new(relay, relay_metrics),
        }
    }

    /// The command stack for one session.
    pub fn command_service(&self) -> CommandService {
        let mut inner = BoxCommand::new(Relay::new(self.relay.clone()));
        for rate in self.rates.iter().rev() {
            inner = rate(inner);
        }
        self.metrics.layer(self.protocol.layer(inner))
    }
}
