//! Header changes a scanner asked for, made on the message's header section: fields removed
//! (all, the n-th, or the n-th from the end), the subject rewritten, fields added at the top.
//! Values from a scanner are made safe first: a line break is kept only as folding (followed by
//! white space, written CRLF), any other CR or LF goes, and a field name must be printable
//! ASCII without `:`.

/// What to change in the header section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    /// Fields to remove: name and occurrence (`0` all, `n` the n-th, `-n` the n-th from the end).
    pub remove: Vec<(String, i64)>,
    /// The new subject (the `Subject` field's value, replaced or added).
    pub subject: Option<String>,
    /// Fields to add at the top, in order.
    pub add: Vec<(String, String)>,
}

impl HeaderEdits {
    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.subject.is_none() && self.add.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// `value` as a field body: folding kept (CRLF + white space), every other CR or LF dropped.
fn safe_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\n' => {
                if matches!(chars.peek(), Some(' ' | '\t')) {
                    out.push_str("\r\n");
                }
            }
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

fn field(name: &str, value: &str) -> Vec<u8> {
    format!("{name}: {}\r\n", safe_value(value)).into_bytes()
}

/// The name of a field (its first line up to `:`).
fn name_of(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    field[..end].trim_ascii_end()
}

/// `message` (CRLF lines) with `edits` made to its header section; the body is untouched.
pub fn apply(message: &[u8], edits: &HeaderEdits) -> Vec<u8> {
    // The header section: up to and including the first empty line (or all of a message
    // without a body).
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    let mut body_at = message.len();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            body_at = at;
            break;
        }
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => {
                let start = at - last.len();
                *last = &message[start..at + line.len()];
            }
            _ => fields.push(&message[at..at + line.len()]),
        }
        at += line.len();
    }
    let mut keep = vec![true; fields.len()];
    for (name, occurrence) in &edits.remove {
        let matching: Vec<usize> = (0..fields.len())
            .filter(|&i| name_of(fields[i]).eq_ignore_ascii_case(name.as_bytes()))
            .collect();
        let chosen: Vec<usize> = match *occurrence {
            0 => matching,
            n if n > 0 => matching.get(n as usize - 1).copied().into_iter().collect(),
            n => matching
                .len()
                .checked_sub(n.unsigned_abs() as usize)
                .and_then(|i| matching.get(i).copied())
                .into_iter()
                .collect(),
        };
        for i in chosen {
            keep[i] = false;
        }
    }
    let mut out = Vec::with_capacity(message.len() + 512);
    for (name, value) in &edits.add {
        if valid_name(name) {
            out.extend_from_slice(&field(name, value));
        }
    }
    let mut subject_done = false;
    for (i, f) in fields.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        if let Some(subject) = &edits.subject
            && name_of(f).eq_ignore_ascii_case(b"subject")
        {
            if !subject_done {
                out.extend_from_slice(&field("Subject", subject));
                subject_done = true;
            }
            continue;
        }
        out.extend_from_slice(f);
    }
    if let (Some(subject), false) = (&edits.subject, subject_done) {
        out.extend_from_slice(&field("Subject", subject));
    }
    out.extend_from_slice(&message[body_at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"X-Spam: old\r\nSubject: hello\r\n there\r\nX-Spam: older\r\n\
        From: a@example.org\r\n\r\nSubject: body line\r\n";

    #[test]
    fn fields_are_removed_by_occurrence_and_added_at_the_top() {
        let out = apply(
            MESSAGE,
            &HeaderEdits {
                remove: vec![("x-spam".into(), -1)],
                subject: None,
                add: vec![("X-Spam".into(), "Yes".into())],
            },
        );
        assert_eq!(
            out,
            b"X-Spam: Yes\r\nX-Spam: old\r\nSubject: hello\r\n there\r\n\
              From: a@example.org\r\n\r\nSubject: body line\r\n"
        );
        let out = apply(
            MESSAGE,
            &HeaderEdits {
                remove: vec![("X-Spam".into(), 0)],
                ..HeaderEdits::default()
            },
        );
        assert!(!out.starts_with(b"X-Spam"));
        assert!(!String::from_utf8_lossy(&out).contains("X-Spam"));
    }

    #[test]
    fn the_subject_is_rewritten_folding_and_all_and_the_body_is_untouched() {
        let out = apply(
            MESSAGE,
            &HeaderEdits {
                subject: Some("*** SPAM *** hello there".into()),
                ..HeaderEdits::default()
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Subject: *** SPAM *** hello there\r\nX-Spam: older"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nSubject: body line\r\n"), "{text}");
    }

    #[test]
    fn a_value_cannot_add_a_field_of_its_own() {
        let out = apply(
            b"From: a@example.org\r\n\r\nbody\r\n",
            &HeaderEdits {
                add: vec![
                    (
                        "X-Result".into(),
                        "a;\n\tb\r\nBcc: victim@example.net".into(),
                    ),
                    ("Bad Name".into(), "x".into()),
                ],
                ..HeaderEdits::default()
            },
        );
        assert_eq!(
            out,
            b"X-Result: a;\r\n\tbBcc: victim@example.net\r\nFrom: a@example.org\r\n\r\nbody\r\n"
        );
    }
}
