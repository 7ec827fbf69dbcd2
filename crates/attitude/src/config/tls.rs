//! `[tls]`: the server certificate.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[tls]`: the certificate and key (PEM) for STARTTLS and implicit TLS; reloaded when the
/// files change. Without them, STARTTLS is not offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Tls {
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

impl Tls {
    /// Cert and key go together.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::Invalid(
                "[tls] cert and key go together: set both (or --tls-cert and --tls-key)".into(),
            ));
        }
        Ok(())
    }
}
