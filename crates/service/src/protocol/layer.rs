use std::sync::Arc;

use tower_layer::Layer;

use crate::auth::AuthOffer;

use super::Protocol;

/// Settings of the protocol layer.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// Name in the EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as `SIZE`).
    pub max_message_size: u64,
    /// Most recipients in one transaction.
    pub max_recipients: usize,
    /// AUTH mechanisms to offer (`None`: AUTH is not offered).
    pub auth: Option<Arc<AuthOffer>>,
    /// MAIL needs a successful AUTH first (530 5.7.0), as on a submission port.
    pub require_auth: bool,
    /// MAIL needs TLS first (530 5.7.0), as on a submission port.
    pub require_tls: bool,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            auth: None,
            require_auth: false,
            require_tls: false,
        }
    }
}

/// Wraps a command service in [`Protocol`].
#[derive(Debug, Clone)]
pub struct ProtocolLayer {
    config: Arc<ProtocolConfig>,
}

impl ProtocolLayer {
    /// A layer with this configuration.
    pub fn new(config: ProtocolConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for ProtocolLayer {
    type Service = Protocol<S>;

    fn layer(&self, inner: S) -> Protocol<S> {
        Protocol::new(inner, self.config.clone())
    }
}
