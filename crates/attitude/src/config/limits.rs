//! `[limits]`: sizes and counts.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Largest message in octets (advertised as SIZE; checked on MAIL SIZE= and on the body).
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Commands that send no mail (NOOP, RSET, HELP, VRFY, EXPN, a repeated HELO/EHLO) before
    /// the session is closed with 421 4.7.0, like Postfix's `smtpd_junk_command_limit`; 0: off.
    pub junk_command_limit: u32,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest line in a message, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Minimum DATA rate in octets per second once `timeouts.data` has passed (0 = off).
    pub min_data_rate: u64,
    /// Octets kept free below the backends' SIZE limit for what attitude and the scanners add
    /// to a message (Received and scanner headers): SIZE offered to clients is at most the
    /// backends' limit less this.
    pub size_headroom: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
            junk_command_limit: 100,
            max_command_line: 512,
            max_text_line: 1000,
            min_data_rate: 500,
            size_headroom: 16 * 1024,
        }
    }
}

impl Limits {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.max_message_size == 0 {
            return invalid("[limits] max_message_size must be greater than 0".into());
        }
        if self.max_command_line < 512 {
            return invalid(format!(
                "[limits] max_command_line = {} is below the RFC 5321 minimum of 512",
                self.max_command_line
            ));
        }
        if self.max_text_line < 1000 {
            return invalid(format!(
                "[limits] max_text_line = {} is below the RFC 5321 minimum of 1000",
                self.max_text_line
            ));
        }
        if self.max_recipients == 0 {
            return invalid(
                "[limits] max_recipients must be at least 1 (RFC 5321 asks for 100)".into(),
            );
        }
        if self.max_errors == 0 {
            return invalid("[limits] max_errors must be at least 1".into());
        }
        Ok(())
    }
}
