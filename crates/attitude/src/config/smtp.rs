//! `[smtp]`: SMTP protocol policy.

use attitude_codec::{BareLineEndings, LongLines};
use serde::{Deserialize, Serialize};

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Smtp {
    /// Bare CR/LF and NUL in DATA: `"reject"` (default) or `"normalize"`.
    pub bare_line_endings: BareLineEndings,
    /// Message lines over `[limits] max_text_line`: `"reject"` (default, 552 5.6.0 at end of
    /// data, as Exim) or `"wrap"` (folded with CRLF SP, as Postfix's `smtp_line_length_limit`).
    pub long_lines: LongLines,
    /// MAIL needs TLS first (530 5.7.0): for a submission listener.
    pub require_tls: bool,
    /// A `Received:` header of attitude's own at the top of every relayed message (RFC 5321
    /// §4.4): the client's HELO and address, the protocol, TLS, an id from the session log.
    pub received_header: bool,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            bare_line_endings: BareLineEndings::default(),
            long_lines: LongLines::default(),
            require_tls: false,
            received_header: true,
        }
    }
}
