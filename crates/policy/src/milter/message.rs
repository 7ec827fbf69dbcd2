//! A held message as the milters see it (its header fields, its body) and the header and body
//! changes they ask for, applied in order.

use attitude_engines::milter::Modification;

/// A message split into its header fields and its body (canonical CRLF lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// `(name, value)`: the value as written after the colon (its leading space and folding
    /// kept, each line ending CRLF but the last).
    headers: Vec<(String, String)>,
    /// Everything after the empty line.
    body: Vec<u8>,
    /// The header section ended with an empty line (else the message was headers only).
    separated: bool,
}

impl Message {
    /// Splits `bytes` (the content as the driver passed it on: unstuffed, CRLF lines).
    pub(super) fn parse(bytes: &[u8]) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut at = 0;
        let mut separated = false;
        while at < bytes.len() {
            let end = bytes[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(bytes.len(), |p| at + p);
            let line = &bytes[at..end];
            let next = (end + 2).min(bytes.len());
            if line.is_empty() {
                separated = true;
                at = next;
                break;
            }
            let text = String::from_utf8_lossy(line);
            if matches!(line[0], b' ' | b'\t')
                && let Some((_, value)) = headers.last_mut()
            {
                value.push_str("\r\n");
                value.push_str(&text);
            } else if let Some((name, value)) = text.split_once(':')
                && !name.is_empty()
                && !name.contains([' ', '\t'])
            {
                headers.push((name.to_owned(), value.to_owned()));
            } else {
                // Not a header field: the body starts here (no empty line before it).
                break;
            }
            at = next;
        }
        Self {
            headers,
            body: bytes[at..].to_vec(),
            separated,
        }
    }

    /// The header fields as a milter is sent them: the value without the one space after the
    /// colon, folded lines joined with LF (as Postfix sends them).
    pub(super) fn fields(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let value = value.strip_prefix(' ').unwrap_or(value);
                (name.clone(), value.replace("\r\n", "\n"))
            })
            .collect()
    }

    /// The body.
    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    /// Applies one milter's header and body changes (envelope changes and quarantine are the
    /// caller's).
    pub(super) fn apply(&mut self, modifications: &[Modification]) {
        let mut new_body: Option<Vec<u8>> = None;
        for m in modifications {
            match m {
                Modification::AddHeader(name, value) => {
                    self.headers.push((name.clone(), written(value)));
                }
                Modification::InsertHeader(index, name, value) => {
                    let at = (*index as usize).min(self.headers.len());
                    self.headers.insert(at, (name.clone(), written(value)));
                }
                Modification::ChangeHeader(index, name, value) => {
                    let found = self
                        .headers
                        .iter()
                        .enumerate()
                        .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                        .nth((*index as usize).saturating_sub(1))
                        .map(|(i, _)| i);
                    match (found, value.is_empty()) {
                        (Some(i), true) => {
                            self.headers.remove(i);
                        }
                        (Some(i), false) => self.headers[i].1 = written(value),
                        // libmilter: changing a header that is not there adds it.
                        (None, false) => self.headers.push((name.clone(), written(value))),
                        (None, true) => {}
                    }
                }
                Modification::ReplaceBody(piece) => {
                    new_body
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(piece);
                }
                _ => {}
            }
        }
        if let Some(body) = new_body {
            self.body = canonical(&body);
            self.separated = true;
        }
    }

    /// The message as it goes on.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64 * self.headers.len() + 2);
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.separated || !self.body.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.body);
        out
    }
}

/// A value a milter gave, as written after the colon: a space, then its lines joined with CRLF.
fn written(value: &str) -> String {
    let value = value.replace("\r\n", "\n").replace('\n', "\r\n");
    format!(" {value}")
}

/// `bytes` with every line ending CRLF (a milter's body may use LF).
fn canonical(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] =
        b"From: a@example.org\r\nSubject: a long\r\n subject\r\nTo: b@example.com\r\n\r\nbody\r\n";

    #[test]
    fn parses_and_writes_back_byte_for_byte() {
        let m = Message::parse(MESSAGE);
        assert_eq!(
            m.fields(),
            [
                ("From".to_string(), "a@example.org".to_string()),
                ("Subject".into(), "a long\n subject".into()),
                ("To".into(), "b@example.com".into()),
            ]
        );
        assert_eq!(m.body(), b"body\r\n");
        assert_eq!(m.to_bytes(), MESSAGE);
        let headers_only = b"Subject: x\r\n";
        assert_eq!(Message::parse(headers_only).to_bytes(), headers_only);
    }

    #[test]
    fn header_and_body_changes_apply_in_order() {
        let mut m = Message::parse(MESSAGE);
        m.apply(&[
            Modification::InsertHeader(0, "DKIM-Signature".into(), "v=1;\n\tb=x".into()),
            Modification::AddHeader("X-Spam".into(), "no".into()),
            Modification::ChangeHeader(1, "subject".into(), "short".into()),
            Modification::ChangeHeader(1, "To".into(), String::new()),
            Modification::ReplaceBody(b"new\nbody\n".as_slice().into()),
        ]);
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            "DKIM-Signature: v=1;\r\n\tb=x\r\nFrom: a@example.org\r\nSubject: short\r\n\
             X-Spam: no\r\n\r\nnew\r\nbody\r\n"
        );
    }
}
