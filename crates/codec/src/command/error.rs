//! Why a command line is refused, and the reply each refusal gets.

use smtp_proto::Error as ProtoError;

use crate::reply::{EnhancedStatus, Reply};

/// Why a command line could not be decoded. Each maps to one clear reply with
/// [`CommandError::reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The line exceeded the configured command line limit; its rest is discarded.
    #[error("command line too long (limit {limit} octets)")]
    LineTooLong {
        /// The limit in octets, line ending included.
        limit: usize,
    },
    /// Empty line.
    #[error("empty command")]
    Empty,
    /// Verb with characters other than ASCII letters and digits.
    #[error("invalid characters in command verb")]
    BadVerb,
    /// Unknown verb.
    #[error("unknown command")]
    Unknown,
    /// NUL octet in a command line.
    #[error("NUL character in command")]
    Nul,
    /// CR not followed by LF inside a command line.
    #[error("bare CR in command")]
    BareCr,
    /// Not valid UTF-8.
    #[error("invalid UTF-8 in command")]
    InvalidUtf8,
    /// Grammar error, with the expected syntax.
    #[error("syntax error, expected: {0}")]
    Syntax(&'static str),
    /// Malformed address.
    #[error("malformed address")]
    BadAddress,
    /// Address longer than 256 octets.
    #[error("address too long")]
    AddressTooLong,
    /// Non-ASCII address without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
    /// A MAIL/RCPT parameter attitude does not know or does not offer (its keyword).
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
    /// A parameter with a bad value (its keyword).
    #[error("invalid value for parameter {0}")]
    InvalidParameter(String),
}

impl CommandError {
    pub(super) fn from_proto(error: ProtoError, verb: &[u8]) -> Self {
        match error {
            ProtoError::UnknownCommand => CommandError::Unknown,
            ProtoError::InvalidSenderAddress | ProtoError::InvalidRecipientAddress => {
                CommandError::BadAddress
            }
            ProtoError::SyntaxError { syntax } => CommandError::Syntax(syntax),
            ProtoError::InvalidParameter { param } => CommandError::InvalidParameter(param.into()),
            ProtoError::UnsupportedParameter { param } => CommandError::UnsupportedParameter(param),
            ProtoError::NeedsMoreData { .. }
            | ProtoError::ResponseTooLong
            | ProtoError::InvalidResponse { .. } => {
                if verb.eq_ignore_ascii_case(b"MAIL") {
                    CommandError::Syntax("MAIL FROM:<reverse-path> [parameters]")
                } else if verb.eq_ignore_ascii_case(b"RCPT") {
                    CommandError::Syntax("RCPT TO:<forward-path> [parameters]")
                } else {
                    CommandError::Syntax("a complete command line")
                }
            }
        }
    }

    /// The reply a server sends for this error.
    pub fn reply(&self) -> Reply {
        let s = EnhancedStatus::new;
        match self {
            CommandError::LineTooLong { limit } => Reply::new(
                500,
                s(5, 5, 2),
                format!("Line too long (limit {limit} octets); rest of line discarded"),
            ),
            CommandError::Empty => Reply::new(500, s(5, 5, 2), "Empty command"),
            CommandError::BadVerb => Reply::new(500, s(5, 5, 2), "Invalid characters in command"),
            CommandError::Unknown => Reply::new(500, s(5, 5, 1), "Command unrecognized"),
            CommandError::Nul => {
                Reply::new(500, s(5, 5, 2), "NUL character not allowed in command")
            }
            CommandError::BareCr => {
                Reply::new(500, s(5, 5, 2), "Bare CR not allowed in command; use CRLF")
            }
            CommandError::InvalidUtf8 => Reply::new(500, s(5, 5, 2), "Command is not valid UTF-8"),
            CommandError::Syntax(syntax) => {
                Reply::new(501, s(5, 5, 4), format!("Syntax error, expected: {syntax}"))
            }
            CommandError::BadAddress => Reply::new(553, s(5, 1, 7), "Malformed address"),
            CommandError::AddressTooLong => {
                Reply::new(553, s(5, 1, 7), "Address too long (limit 256 octets)")
            }
            CommandError::NeedsSmtpUtf8 => {
                Reply::new(553, s(5, 6, 7), "Non-ASCII address requires SMTPUTF8")
            }
            CommandError::UnsupportedParameter(param) => Reply::new(
                555,
                s(5, 5, 4),
                format!("Parameter {} not supported", printable(param)),
            ),
            CommandError::InvalidParameter(param) => Reply::new(
                501,
                s(5, 5, 4),
                format!("Invalid value for parameter {}", printable(param)),
            ),
        }
    }
}

/// A keyword for a reply: at most 32 printable ASCII characters.
fn printable(keyword: &str) -> String {
    keyword
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}
