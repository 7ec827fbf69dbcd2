use std::sync::Arc;

use tower_layer::Layer;

use attitude_balance::Offer;
use attitude_codec::{Extension, Extensions};

use crate::auth::AuthOffer;

use super::Protocol;

/// Where the protocol layer learns what the backends offer now (the pool's
/// [`attitude_balance::Pool::offer`]; a fixed offer for a server that takes everything).
#[derive(Clone)]
pub struct BackendOffer(Arc<dyn Fn() -> Offer + Send + Sync>);

impl BackendOffer {
    /// An offer read from `source` at every EHLO.
    pub fn new(source: impl Fn() -> Offer + Send + Sync + 'static) -> Self {
        Self(Arc::new(source))
    }

    /// The offer now.
    pub fn get(&self) -> Offer {
        (self.0)()
    }
}

impl std::fmt::Debug for BackendOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BackendOffer").field(&self.get()).finish()
    }
}

/// The extensions attitude relays end to end when its backends offer them (its own,
/// PIPELINING, SIZE, CHUNKING, ENHANCEDSTATUSCODES, STARTTLS and AUTH, are offered by the
/// protocol layer itself: BDAT goes on as DATA to a backend without CHUNKING). BINARYMIME also
/// needs backends with CHUNKING. FUTURERELEASE is not among them: its EHLO line carries the
/// backend's own limits.
pub const RELAYED: [Extension; 8] = [
    Extension::EightBitMime,
    Extension::SmtpUtf8,
    Extension::Dsn,
    Extension::BinaryMime,
    Extension::RequireTls,
    Extension::MtPriority,
    Extension::DeliverBy,
    Extension::Rrvs,
];

/// [`RELAYED`] as a set.
pub fn relayed() -> Extensions {
    RELAYED.into_iter().collect()
}

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
    /// What the backends offer (`None`: only attitude's own extensions).
    pub backends: Option<BackendOffer>,
    /// Octets kept free below a backend's SIZE limit for what attitude adds to a message (its
    /// Received header, scanners' headers).
    pub size_headroom: u64,
    /// REQUIRETLS may be offered (inside TLS): every backend is reached over verified TLS.
    pub requiretls: bool,
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
            backends: None,
            size_headroom: 16 * 1024,
            requiretls: false,
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
