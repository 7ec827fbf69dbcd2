//! Header checks: regular expressions over each logical header line (`Name: value`, unfolded),
//! in the spirit of Postfix's `header_checks`. The first rule that matches decides.

use regex::bytes::Regex;

/// What a matching header check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum HeaderAction {
    /// `554 5.7.1`: refused for good.
    Reject,
    /// `451 4.7.1`: try again later.
    Defer,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct HeaderCheck {
    /// Matched against `Name: value`.
    pub pattern: Regex,
    /// What a match does.
    pub action: HeaderAction,
    /// The reply text.
    pub text: String,
}

/// A header check whose pattern does not compile.
#[derive(Debug, thiserror::Error)]
#[error("header check /{pattern}/: {source}")]
pub struct HeaderCheckError {
    /// The pattern as written.
    pub pattern: String,
    /// Cause.
    pub source: regex::Error,
}

impl HeaderCheck {
    /// A rule; `pattern` is case-insensitive unless it says otherwise (`(?-i)`).
    pub fn new(
        pattern: &str,
        action: HeaderAction,
        text: Option<&str>,
    ) -> Result<Self, HeaderCheckError> {
        let pattern = Regex::new(&format!("(?i){pattern}")).map_err(|source| HeaderCheckError {
            pattern: pattern.to_owned(),
            source,
        })?;
        let text = text.map_or_else(
            || match action {
                HeaderAction::Reject => "Message content rejected".to_string(),
                HeaderAction::Defer => "Message content deferred; try again later".to_string(),
            },
            str::to_string,
        );
        Ok(Self {
            pattern,
            action,
            text,
        })
    }
}

/// The first rule of `checks` that matches a header of `header_section` (the message up to its
/// first empty line), and the header it matched.
pub fn first_match<'a>(
    checks: &'a [HeaderCheck],
    header_section: &[u8],
) -> Option<(&'a HeaderCheck, String)> {
    // Bytes, not text: a header with 8-bit junk is still matched, and nothing is converted.
    let mut logical: Vec<u8> = Vec::new();
    let mut lines = header_section
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break;
        }
        logical.extend_from_slice(line);
        // A line that starts with white space continues the header (RFC 5322 folding).
        if lines
            .peek()
            .is_some_and(|next| next.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            continue;
        }
        if let Some(check) = checks.iter().find(|c| c.pattern.is_match(&logical)) {
            return Some((check, String::from_utf8_lossy(&logical).into_owned()));
        }
        logical.clear();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfolded_and_case_insensitive() {
        let checks = vec![
            HeaderCheck::new("^Subject:.*lottery winner", HeaderAction::Reject, None).unwrap(),
            HeaderCheck::new(
                "^X-Mailer: MassMail",
                HeaderAction::Defer,
                Some("Slow down"),
            )
            .unwrap(),
        ];
        let folded = b"From: a@example.org\r\nSubject: you are the\r\n lottery WINNER\r\n\r\nSubject: body lottery winner\r\n";
        let (check, header) = first_match(&checks, folded).unwrap();
        assert_eq!(check.action, HeaderAction::Reject);
        assert_eq!(header, "Subject: you are the lottery WINNER");
        assert!(
            first_match(
                &checks,
                b"Subject: hello\r\n\r\nSubject: lottery winner\r\n"
            )
            .is_none(),
            "the body is not headers"
        );
        let (check, _) = first_match(&checks, b"x-mailer: massmail 2.0\r\n\r\n").unwrap();
        assert_eq!(
            (check.action, check.text.as_str()),
            (HeaderAction::Defer, "Slow down")
        );
        assert!(HeaderCheck::new("([", HeaderAction::Reject, None).is_err());
    }
}
