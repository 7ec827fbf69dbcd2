//! `[smtp]`: SMTP protocol policy.

use attitude_codec::BareLineEndings;
use serde::{Deserialize, Serialize};

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Smtp {
    /// Bare CR/LF and NUL in DATA: `"reject"` (default) or `"normalize"`.
    pub bare_line_endings: BareLineEndings,
    /// MAIL needs TLS first (530 5.7.0): for a submission listener.
    pub require_tls: bool,
}
