//! Attachment names: the extensions worms travel in, however the name is dressed up.

use std::collections::HashSet;
use std::sync::LazyLock;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

/// Extensions refused by default (compared case-insensitively).
pub const DEFAULT_BLOCKED: &[&str] = &[
    "exe", "scr", "pif", "com", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "hta", "cpl",
    "msi", "jar", "lnk", "iso", "img", "dll",
];

/// Nested `message/rfc822` parts are opened this deep (mail-parser itself decodes at most three
/// levels of encoded nested messages).
const MAX_DEPTH: usize = 8;

/// What a message's top-level header must contain for any part of it to have a name: a
/// `name`/`filename` parameter (RFC 2231 forms included), a multipart or nested-message type
/// (whose parts have headers of their own), or a uuencoded transfer encoding. Any other message
/// is one opaque part: unless its body holds a uuencoded block (`begin 644 name`), it has no
/// named attachment and is not parsed. Most mail is plain, and parsing it was most of what this
/// policy cost; the header is a few hundred octets, the body search a SIMD scan.
static HEADER_MAY_NAME_A_PART: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new("(?i)name|multipart|message/|uuencode").expect("valid regex")
});

fn may_name_a_part(raw: &[u8]) -> bool {
    let end = memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw.len(), |i| i + 2);
    let (head, body) = raw.split_at(end);
    header_may_name_a_part(head) || memchr::memmem::find(body, b"begin ").is_some()
}

/// Whether a message with this top-level header section can have named parts (then it must be
/// parsed whole); otherwise its body only needs [`AttachmentRules::scan_uuencoded`], chunk by
/// chunk, with no copy kept.
pub(super) fn header_may_name_a_part(head: &[u8]) -> bool {
    HEADER_MAY_NAME_A_PART.is_match(head)
}

/// A refused attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The attachment's name, decoded, made printable for a reply line.
    pub name: String,
    /// The refused extension, lower case.
    pub extension: String,
    /// The name hides the extension behind another one (`invoice.pdf.exe`).
    pub double: bool,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Attachment \"{}\" refused: .{} files are not accepted",
            self.name, self.extension
        )?;
        if self.double {
            f.write_str(" (double extension)")?;
        }
        Ok(())
    }
}

/// Which attachment names are refused.
#[derive(Debug, Clone)]
pub struct AttachmentRules {
    blocked: HashSet<String>,
}

impl AttachmentRules {
    /// Refuses names ending in one of `extensions` (with or without the dot, any case).
    pub fn new<I, E>(extensions: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: AsRef<str>,
    {
        Self {
            blocked: extensions
                .into_iter()
                .map(|e| e.as_ref().trim().trim_start_matches('.').to_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// The verdict on one (already decoded) file name. Windows ignores trailing dots and spaces,
    /// and a path is not part of the name, so neither hides the extension here.
    pub fn check_name(&self, name: &str) -> Option<Blocked> {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let trimmed =
            base.trim_end_matches(|c: char| c.is_whitespace() || c.is_control() || c == '.');
        let lower = trimmed.to_lowercase();
        let (stem, extension) = lower.rsplit_once('.')?;
        let extension = extension.trim();
        if !self.blocked.contains(extension) {
            return None;
        }
        let double = stem
            .rsplit_once('.')
            .is_some_and(|(_, inner)| !inner.trim().is_empty());
        Some(Blocked {
            name: printable(base),
            extension: extension.to_string(),
            double,
        })
    }

    /// The first refused attachment of a whole message (RFC 5322 with MIME), looking into
    /// nested messages. Names are decoded (RFC 2047 encoded words, RFC 2231 parameters).
    pub fn scan(&self, raw: &[u8]) -> Option<Blocked> {
        if !may_name_a_part(raw) {
            return None;
        }
        let message = MessageParser::new().with_mime_headers().parse(raw)?;
        self.scan_message(&message, 0)
    }

    /// The first refused name of a uuencoded block (`begin 644 name`) in `lines` (whole lines).
    pub fn scan_uuencoded(&self, lines: &[u8]) -> Option<Blocked> {
        memchr::memmem::find_iter(lines, b"begin ")
            .filter(|&at| at == 0 || lines[at - 1] == b'\n')
            .find_map(|at| {
                let line = &lines[at..];
                let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
                let text = String::from_utf8_lossy(line);
                let mut words = text.trim_end().splitn(3, ' ');
                let (_, mode, name) = (words.next(), words.next()?, words.next()?);
                mode.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| self.check_name(name.trim()))
                    .flatten()
            })
    }

    fn scan_message(&self, message: &Message<'_>, depth: usize) -> Option<Blocked> {
        for part in &message.parts {
            if let Some(blocked) = part.attachment_name().and_then(|n| self.check_name(n)) {
                return Some(blocked);
            }
            if let PartType::Message(nested) = &part.body
                && depth < MAX_DEPTH
                && let Some(blocked) = self.scan_message(nested, depth + 1)
            {
                return Some(blocked);
            }
        }
        None
    }
}

/// A name fit for a reply line: printable ASCII, at most 80 characters.
fn printable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if name.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AttachmentRules {
        AttachmentRules::new(DEFAULT_BLOCKED)
    }

    #[test]
    fn only_messages_that_can_name_a_part_are_parsed() {
        let plain = b"Subject: hi\r\nFrom: a@example.org\r\n\r\nthe name of the game\r\n";
        assert!(
            !may_name_a_part(plain),
            "a body mentioning a name is still one opaque part"
        );
        let multipart = b"Content-Type: Multipart/Mixed; boundary=x\r\n\r\n--x\r\n";
        assert!(may_name_a_part(multipart));
        let named = b"Content-Type: application/octet-stream;\r\n name=\"a.exe\"\r\n\r\nAA\r\n";
        assert!(may_name_a_part(named));
        let uuencoded = b"Subject: x\r\n\r\nbegin 644 evil.exe\r\nM\r\nend\r\n";
        assert!(may_name_a_part(uuencoded));
        let found = rules().scan_uuencoded(b"text\r\nbegin 644 evil.exe\r\nM\r\nend\r\n");
        assert_eq!(found.map(|b| b.extension), Some("exe".into()));
        assert!(
            rules()
                .scan_uuencoded(b"let us begin 644 evil.exe\r\n")
                .is_none()
        );
        assert!(rules().scan_uuencoded(b"begin 644 notes.txt\r\n").is_none());
    }

    #[test]
    fn names() {
        let r = rules();
        assert_eq!(r.check_name("report.pdf"), None);
        assert_eq!(r.check_name("exe"), None);
        assert_eq!(r.check_name("notes.exe.txt"), None);
        let b = r.check_name("setup.EXE").unwrap();
        assert_eq!((b.extension.as_str(), b.double), ("exe", false));
        let b = r.check_name("invoice.pdf.exe").unwrap();
        assert!(b.double);
        assert_eq!(
            b.to_string(),
            "Attachment \"invoice.pdf.exe\" refused: .exe files are not accepted (double extension)"
        );
        for hidden in [
            "invoice.pdf.scr. . ",
            "C:\\Users\\x\\run.bat",
            "dir/run.cmd",
            "x.pdf      .vbs",
        ] {
            assert!(r.check_name(hidden).is_some(), "{hidden}");
        }
        assert_eq!(
            r.check_name("f\u{e9}e.js").unwrap().name,
            "f?e.js",
            "reply text stays ASCII"
        );
        assert!(AttachmentRules::new([".ZIP"]).check_name("a.zip").is_some());
    }

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/../../tests/samples/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn mime_samples() {
        let r = rules();
        let found = |name: &str| r.scan(&sample(name));
        let b = found("plain-exe.eml").unwrap();
        assert_eq!((b.name.as_str(), b.double), ("setup.exe", false));
        let b = found("double-extension.eml").unwrap();
        assert_eq!((b.name.as_str(), b.double), ("invoice.pdf.exe", true));
        let b = found("encoded-rfc2231.eml").unwrap();
        assert_eq!(
            (b.name.as_str(), b.extension.as_str()),
            ("r?sum? final.SCR", "scr")
        );
        let b = found("encoded-rfc2047.eml").unwrap();
        assert_eq!((b.name.as_str(), b.double), ("?berweisung.pdf.js", true));
        let b = found("nested-rfc822.eml").unwrap();
        assert_eq!(b.name, "pictures.scr");
        assert_eq!(found("harmless-pdf.eml"), None);
    }
}
