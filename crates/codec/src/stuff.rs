//! Dot-stuffing (RFC 5321 §4.5.2) for DATA content sent to a peer.

use bytes::{BufMut, BytesMut};

/// Appends `content` to `dst` as canonical, dot-stuffed DATA wire bytes.
///
/// `content` is message text as [`crate::ServerCodec`] emits it: whole lines ending in CRLF,
/// not dot-stuffed. Whatever it holds, the output is canonical: every line ends in CRLF (a bare
/// LF gets its CR, a bare CR becomes CRLF, NUL is dropped) and every line that starts with `.`
/// gets one more. So nothing passed through here can end the DATA phase early or smuggle a
/// command to the peer. `at_line_start` carries line state across calls; it starts `true` after
/// the DATA command and is left `true` when `content` ends in a complete line.
pub fn dot_stuff_into(content: &[u8], dst: &mut BytesMut, at_line_start: &mut bool) {
    if is_canonical(content) {
        // What the decoder emits: only the dots need work, found with one search.
        dst.reserve(content.len() + 16);
        if *at_line_start && content[0] == b'.' {
            dst.put_u8(b'.');
        }
        let mut from = 0;
        for at in memchr::memmem::find_iter(content, b"\n.") {
            dst.put_slice(&content[from..=at]);
            dst.put_u8(b'.');
            from = at + 1;
        }
        dst.put_slice(&content[from..]);
        *at_line_start = true;
        return;
    }
    stuff_any(content, dst, at_line_start);
}

/// The general case: canonicalises line endings and NUL as it stuffs.
fn stuff_any(content: &[u8], dst: &mut BytesMut, at_line_start: &mut bool) {
    dst.reserve(content.len() + content.len() / 64 + 8);
    let mut rest = content;
    while !rest.is_empty() {
        let i = memchr::memchr3(b'\n', b'\r', b'\0', rest).unwrap_or(rest.len());
        if i > 0 {
            if *at_line_start && rest[0] == b'.' {
                dst.put_u8(b'.');
            }
            dst.put_slice(&rest[..i]);
            *at_line_start = false;
        }
        let Some(&special) = rest.get(i) else {
            return;
        };
        match special {
            b'\r' if rest.get(i + 1) == Some(&b'\n') => {
                dst.put_slice(b"\r\n");
                rest = &rest[i + 2..];
                *at_line_start = true;
            }
            b'\r' | b'\n' => {
                dst.put_slice(b"\r\n");
                rest = &rest[i + 1..];
                *at_line_start = true;
            }
            _ => {
                // NUL: dropped; the line state stays as it was.
                rest = &rest[i + 1..];
            }
        }
    }
}

/// Whether `content` can go on the wire as it is: canonical CRLF lines (see
/// [`dot_stuff_into`]) with no line that starts with `.`. Then [`dot_stuff_into`] would copy it
/// unchanged, and a large chunk can be written without that copy.
pub fn is_wire_ready(content: &[u8], at_line_start: bool) -> bool {
    is_canonical(content)
        && !(at_line_start && content[0] == b'.')
        && memchr::memmem::find(content, b"\n.").is_none()
}

/// Whole CRLF lines and nothing else: ends in CRLF, no NUL, every LF after a CR and as many CRs
/// as LFs (so no bare CR).
fn is_canonical(content: &[u8]) -> bool {
    if !content.ends_with(b"\r\n") || memchr::memchr(0, content).is_some() {
        return false;
    }
    let mut lines = 0;
    for at in memchr::memchr_iter(b'\n', content) {
        if at == 0 || content[at - 1] != b'\r' {
            return false;
        }
        lines += 1;
    }
    memchr::memchr_iter(b'\r', content).count() == lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(s: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        let mut start = true;
        dot_stuff_into(s, &mut dst, &mut start);
        dst.to_vec()
    }

    #[test]
    fn stuffs_leading_dots() {
        assert_eq!(stuff(b".\r\n..x\r\na.b\r\n"), b"..\r\n...x\r\na.b\r\n");
    }

    #[test]
    fn the_fast_path_and_the_slow_path_agree() {
        for input in [
            &b".\r\n..x\r\na.b\r\n"[..],
            b"a\r\n.\r\n\r\n.b\r\n",
            b"a\rb\r\n",
            b"a\nb\r\n",
            b"a\0\r\n",
            b"\r\n",
        ] {
            let mut fast = BytesMut::new();
            let mut start = true;
            dot_stuff_into(input, &mut fast, &mut start);
            let mut slow = BytesMut::new();
            let mut slow_start = true;
            stuff_any(input, &mut slow, &mut slow_start);
            assert_eq!(fast, slow, "{input:?}");
            assert_eq!(start, slow_start);
        }
    }

    #[test]
    fn wire_ready_is_what_stuffing_leaves_alone() {
        for (input, ready) in [
            (&b"a\r\nb\r\n"[..], true),
            (b".a\r\n", false),
            (b"a\r\n.b\r\n", false),
            (b"a\nb\r\n", false),
            (b"a\r\nb", false),
            (b"a\0\r\n", false),
        ] {
            assert_eq!(is_wire_ready(input, true), ready, "{input:?}");
            if ready {
                let mut start = true;
                let mut out = BytesMut::new();
                dot_stuff_into(input, &mut out, &mut start);
                assert_eq!(&out[..], input);
            }
        }
    }

    #[test]
    fn canonicalises_anything() {
        assert_eq!(
            stuff(b"a\n.\nb\r.\r\n\0.\r\n"),
            b"a\r\n..\r\nb\r\n..\r\n..\r\n"
        );
    }

    #[test]
    fn carries_line_state() {
        let mut dst = BytesMut::new();
        let mut start = true;
        dot_stuff_into(b"abc", &mut dst, &mut start);
        assert!(!start);
        dot_stuff_into(b".def\r\n", &mut dst, &mut start);
        dot_stuff_into(b".\r\n", &mut dst, &mut start);
        assert_eq!(&dst[..], b"abc.def\r\n..\r\n");
    }
}
