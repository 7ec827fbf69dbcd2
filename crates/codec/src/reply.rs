//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463).

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};

/// An enhanced status code (`class.subject.detail`, RFC 3463), e.g. `4.4.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject: 0 other, 1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol,
    /// 6 content, 7 security/policy.
    pub subject: u16,
    /// Detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds a status code.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `d.ddd.ddd` at the start of `text`; returns the status and the rest of the text
    /// (leading space removed).
    pub fn parse_prefix(text: &str) -> Option<(Self, &str)> {
        let (token, rest) = match text.find(' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        let mut parts = token.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some((Self::new(class, subject, detail), rest))
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code and one or more lines of
/// text. Text is kept printable: CR, LF and other control characters never reach the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A reply with one line of text. The enhanced status code is derived from `code` when the
    /// class matches (2xx → 2.0.0 etc.) unless given explicitly with [`Reply::with_status`].
    pub fn new(code: u16, status: EnhancedStatus, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (the greeting, 354 and 334 carry none).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// A reply from its parts, as read from a peer.
    pub fn from_parts(
        code: u16,
        status: Option<EnhancedStatus>,
        lines: Vec<Cow<'static, str>>,
    ) -> Self {
        let lines = if lines.is_empty() {
            vec![Cow::Borrowed("")]
        } else {
            lines
        };
        Self {
            code,
            status,
            lines,
        }
    }

    /// Appends a line (for multi-line replies such as EHLO).
    #[must_use]
    pub fn with_line(mut self, line: impl Into<Cow<'static, str>>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// Replaces the enhanced status code.
    #[must_use]
    pub fn with_status(mut self, status: Option<EnhancedStatus>) -> Self {
        self.status = status;
        self
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The text lines (without codes).
    pub fn lines(&self) -> &[Cow<'static, str>] {
        &self.lines
    }

    /// First digit of the code: 2, 3, 4 or 5.
    pub fn class(&self) -> u8 {
        (self.code / 100) as u8
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// 3xx (354 for DATA, 334 for AUTH).
    pub fn is_intermediate(&self) -> bool {
        self.class() == 3
    }

    /// 4xx or 5xx.
    pub fn is_error(&self) -> bool {
        self.class() >= 4
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// `"2xx"`, `"3xx"`, `"4xx"` or `"5xx"`: a bounded label for metrics.
    pub fn class_label(&self) -> &'static str {
        match self.class() {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        }
    }

    /// Encodes the reply on the wire into `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let code = self.code.clamp(100, 599);
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { b' ' } else { b'-' };
            dst.reserve(line.len() + 16);
            let digits = [
                b'0' + (code / 100) as u8,
                b'0' + (code / 10 % 10) as u8,
                b'0' + (code % 10) as u8,
            ];
            dst.put_slice(&digits);
            dst.put_u8(sep);
            if let Some(status) = self.status {
                put_number(dst, u16::from(status.class));
                dst.put_u8(b'.');
                put_number(dst, status.subject);
                dst.put_u8(b'.');
                put_number(dst, status.detail);
                if !line.is_empty() {
                    dst.put_u8(b' ');
                }
            }
            // Only printable text and tabs; anything else would let a peer's reply text inject
            // protocol lines.
            let printable = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
            if line.bytes().all(printable) {
                dst.put_slice(line.as_bytes());
            } else {
                for b in line.bytes() {
                    dst.put_u8(if printable(b) { b } else { b'?' });
                }
            }
            dst.put_slice(b"\r\n");
        }
    }

    /// The reply as wire text (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Appends `n` in decimal (no formatting machinery: this runs for every reply).
fn put_number(dst: &mut BytesMut, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[at..]);
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_encoding_carries_status_on_each_line() {
        let reply = Reply::new(250, EnhancedStatus::new(2, 0, 0), "first").with_line("second");
        assert_eq!(reply.to_wire(), "250-2.0.0 first\r\n250 2.0.0 second\r\n");
    }

    #[test]
    fn control_characters_never_reach_the_wire() {
        let reply = Reply::plain(550, "bad\r\nMAIL FROM:<x>");
        assert_eq!(reply.to_wire(), "550 bad??MAIL FROM:<x>\r\n");
    }

    #[test]
    fn status_prefix_parsing() {
        let (s, rest) = EnhancedStatus::parse_prefix("4.4.1 try later").unwrap();
        assert_eq!((s, rest), (EnhancedStatus::new(4, 4, 1), "try later"));
        assert!(EnhancedStatus::parse_prefix("hello there").is_none());
        assert!(EnhancedStatus::parse_prefix("3.1.1 no").is_none());
    }
}
