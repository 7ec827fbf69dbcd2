//! DATA content: lines up to `<CRLF>.<CRLF>`, dot-unstuffed, checked per [`BareLineEndings`].

use bytes::{Buf, BufMut, BytesMut};

use super::{BareLineEndings, DataError, Frame, LongLines, Mode, ServerCodec};

impl ServerCodec {
    pub(super) fn decode_data(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let limit = self.config.max_text_line;
        loop {
            if self.end_pending {
                if let Some(chunk) = self.take_chunk() {
                    return Some(chunk);
                }
                self.end_pending = false;
                self.mode = Mode::Command;
                self.out = BytesMut::new();
                return Some(Frame::DataEnd(match self.data_error.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                }));
            }
            if self.discarding {
                if !self.discard(src) {
                    return None;
                }
                self.prev_crlf = self.discard_last == b'\r';
                continue;
            }
            // Fast path: a run of plain lines (CRLF, no NUL, no bare CR, no leading dot, not
            // too long) is copied in one piece. Anything else, the end of data included (it
            // starts with a dot), goes line by line below.
            let room = self.config.data_chunk.saturating_sub(self.out.len()).max(1);
            let region = &src[..src.len().min(room + limit)];
            let plain = plain_lines(region, limit, room);
            if plain > 0 {
                if self.data_error.is_none() {
                    self.out.put_slice(&src[..plain]);
                }
                src.advance(plain);
                self.prev_crlf = true;
                self.continuing = false;
                if self.out.len() >= self.config.data_chunk {
                    return self.take_chunk();
                }
                continue;
            }
            let window = &src[..src.len().min(limit)];
            let Some(i) = memchr::memchr(b'\n', window) else {
                if src.len() >= limit {
                    if self.config.long_lines == LongLines::Wrap {
                        self.fold(src, limit);
                    } else {
                        self.fail(DataError::LineTooLong { limit });
                        self.discarding = true;
                    }
                    continue;
                }
                // Chunks are whole lines: the start of a folded line waits for its rest.
                if self.continuing {
                    return None;
                }
                return self.take_chunk();
            };
            // The line is read in place and `src` advanced past it afterwards (no split per
            // line: a 100 KB message is thousands of lines).
            let line = &src[..i + 1];
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let content = &line[..line.len() - if crlf { 2 } else { 1 }];
            if self.prev_crlf && crlf && content == b"." {
                src.advance(i + 1);
                self.end_pending = true;
                continue;
            }
            self.prev_crlf = crlf;
            // The rest of a folded line is not at a line start: nothing to unstuff.
            let continuing = std::mem::take(&mut self.continuing);
            // One pass for both rare bytes; which one only matters when there is one.
            let (bare_cr, nul) = match memchr::memchr2(b'\r', b'\0', content) {
                None => (false, false),
                Some(at) => (
                    memchr::memchr(b'\r', &content[at..]).is_some(),
                    memchr::memchr(b'\0', &content[at..]).is_some(),
                ),
            };
            if self.config.bare_line_endings == BareLineEndings::Reject {
                if !crlf || bare_cr {
                    self.fail(DataError::BareLineEnding);
                } else if nul {
                    self.fail(DataError::Nul);
                }
            }
            if self.data_error.is_none() {
                // Undo dot-stuffing: a line that starts with '.' carries one extra. A lone '.'
                // (once normalised: NUL dropped, a bare CR ending it) that did not end the data
                // is content as it stands: it arrives as '.' (sent on as '..'), as one after a
                // bare CR does.
                let plain =
                    crlf && !bare_cr && !nul && (continuing || content.first() != Some(&b'.'));
                let first = &content[..memchr::memchr(b'\r', content).unwrap_or(content.len())];
                let lone_dot = first.iter().filter(|&&b| b != 0).eq(b".".iter());
                let content = if lone_dot || continuing {
                    content
                } else {
                    content.strip_prefix(b".").unwrap_or(content)
                };
                if plain {
                    // The usual line: copied as it is, CRLF included.
                    self.out.put_slice(line);
                } else if bare_cr || nul {
                    // Normalize: a bare CR ends a line, NUL goes. `dot_stuff_into` on the way
                    // out stuffs any new line that starts with '.'.
                    for &b in content {
                        match b {
                            b'\r' => self.out.put_slice(b"\r\n"),
                            b'\0' => {}
                            b => self.out.put_u8(b),
                        }
                    }
                } else {
                    self.out.put_slice(content);
                }
                if !plain {
                    self.out.put_slice(b"\r\n");
                }
            }
            src.advance(i + 1);
            if self.data_error.is_some() {
                continue;
            }
            if self.out.len() >= self.config.data_chunk {
                return self.take_chunk();
            }
        }
    }
}

impl ServerCodec {
    /// `long_lines = "wrap"`: the first `limit - 3` octets of an over-long line go on as a line
    /// of their own, followed by CRLF SP (the rest continues the line, folded as a header
    /// continuation; Postfix's `smtp_line_length_limit` does the same).
    fn fold(&mut self, src: &mut BytesMut, limit: usize) {
        let n = limit - 3;
        let continuing = std::mem::take(&mut self.continuing);
        let mut piece = &src[..n];
        if self.prev_crlf && !continuing && piece.first() == Some(&b'.') {
            piece = &piece[1..];
        }
        // No LF within the limit: any CR here is bare.
        let bare_cr = memchr::memchr(b'\r', piece).is_some();
        let nul = memchr::memchr(b'\0', piece).is_some();
        if self.config.bare_line_endings == BareLineEndings::Reject && (bare_cr || nul) {
            self.fail(if bare_cr {
                DataError::BareLineEnding
            } else {
                DataError::Nul
            });
        }
        if self.data_error.is_none() {
            for &b in piece {
                match b {
                    b'\r' => self.out.put_slice(b"\r\n"),
                    b'\0' => {}
                    b => self.out.put_u8(b),
                }
            }
            self.out.put_slice(b"\r\n ");
        }
        src.advance(n);
        self.prev_crlf = false;
        self.continuing = true;
    }
}

/// The length of the longest run of whole lines at the start of `region` that need no work:
/// each ends in CRLF, is at most `limit` octets, does not start with `.`, and holds no NUL and
/// no bare CR. The run ends with the line that reaches `room` octets (a chunk's bound).
fn plain_lines(region: &[u8], limit: usize, room: usize) -> usize {
    let nul = memchr::memchr(b'\0', region).unwrap_or(region.len());
    let bare_cr = memchr::memchr_iter(b'\r', region)
        .find(|&at| region.get(at + 1) != Some(&b'\n'))
        .unwrap_or(region.len());
    let stop = nul.min(bare_cr);
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', region) {
        let line = &region[start..=lf];
        if lf >= stop
            || line.len() > limit
            || line.len() < 2
            || line[line.len() - 2] != b'\r'
            || line[0] == b'.'
        {
            break;
        }
        start = lf + 1;
        if start >= room {
            break;
        }
    }
    start
}
