//! BDAT chunks (CHUNKING, RFC 3030): a chunk is exactly its size in octets, never parsed as
//! commands. Its content is checked as DATA content is (line length, bare CR and LF, NUL, per
//! [`BareLineEndings`]) unless the message is `BODY=BINARYMIME`; it has no dot-stuffing and no
//! end-of-data line, so nothing inside a chunk can end it early.

use bytes::{BufMut, Bytes, BytesMut};

use crate::server::{BareLineEndings, DataError, LongLines};

/// The line state of a BDAT message, across its chunks.
#[derive(Debug, Default)]
pub(crate) struct BdatMessage {
    /// `BODY=BINARYMIME`: content is opaque octets.
    pub(crate) binary: bool,
    /// Octets of the line in progress.
    line_len: usize,
    /// The last octet seen was a CR (whether it was bare depends on the next one).
    pending_cr: bool,
    /// The first error in this message.
    pub(crate) error: Option<DataError>,
    /// Content not yet emitted: the tail of a line, so that chunks are whole lines.
    out: BytesMut,
}

/// Where a piece of content sits in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// More of this chunk follows.
    Inside,
    /// The last octets of a chunk that is not the last.
    ChunkEnd,
    /// The last octets of the message.
    MessageEnd,
}

/// The chunk being read.
#[derive(Debug)]
pub(crate) struct BdatChunk {
    /// Octets of the chunk still to read.
    pub(crate) remaining: u64,
    /// `BDAT ... LAST`.
    pub(crate) last: bool,
    /// The chunk was refused: read and dropped.
    pub(crate) discard: bool,
    /// What the chunk's end had to emit was emitted.
    pub(crate) flushed: bool,
}

impl BdatMessage {
    /// A new message.
    pub(crate) fn new(binary: bool) -> Self {
        Self {
            binary,
            ..Self::default()
        }
    }

    fn fail(&mut self, error: DataError) {
        self.error.get_or_insert(error);
        self.out.clear();
    }

    /// Takes in `input` (part of a chunk); returns content to emit, if any: whole lines once
    /// `chunk_size` octets or the chunk's end is reached, and the tail of the last line at the
    /// message's end.
    pub(crate) fn feed(
        &mut self,
        input: Bytes,
        limit: usize,
        policy: BareLineEndings,
        long_lines: LongLines,
        chunk_size: usize,
        at: At,
    ) -> Option<Bytes> {
        if self.binary {
            return (!input.is_empty()).then_some(input);
        }
        if self.error.is_none() {
            match (policy, long_lines) {
                (BareLineEndings::Reject, LongLines::Reject) => self.check(&input, limit),
                _ => self.transform(&input, limit, policy, long_lines),
            }
        }
        if at == At::MessageEnd {
            if self.pending_cr {
                self.pending_cr = false;
                match policy {
                    BareLineEndings::Reject => self.fail(DataError::BareLineEnding),
                    BareLineEndings::Normalize => self.out.put_slice(b"\r\n"),
                }
            }
            if self.error.is_some() || self.out.is_empty() {
                return None;
            }
            return Some(self.out.split().freeze());
        }
        if self.error.is_some() || (at == At::Inside && self.out.len() < chunk_size) {
            return None;
        }
        // Whole lines only (a CR at the very end may still be half of a CRLF).
        let upto = memchr::memrchr(b'\n', &self.out)?;
        Some(self.out.split_to(upto + 1).freeze())
    }

    /// Reject policy: content is passed as it is, and checked.
    fn check(&mut self, input: &[u8], limit: usize) {
        self.out.put_slice(input);
        let mut line_start = 0usize;
        let mut carried = self.line_len;
        if self.pending_cr && input.first() != Some(&b'\n') && !input.is_empty() {
            return self.fail(DataError::BareLineEnding);
        }
        for at in memchr::memchr3_iter(b'\r', b'\n', b'\0', input) {
            match input[at] {
                b'\n' => {
                    let after_cr = if at == 0 {
                        self.pending_cr
                    } else {
                        input[at - 1] == b'\r'
                    };
                    if !after_cr {
                        return self.fail(DataError::BareLineEnding);
                    }
                    if carried + at + 1 - line_start > limit {
                        return self.fail(DataError::LineTooLong { limit });
                    }
                    line_start = at + 1;
                    carried = 0;
                }
                b'\r' => {
                    if input.get(at + 1).is_some_and(|&b| b != b'\n') {
                        return self.fail(DataError::BareLineEnding);
                    }
                }
                _ => return self.fail(DataError::Nul),
            }
        }
        if !input.is_empty() {
            self.pending_cr = input.last() == Some(&b'\r');
        }
        self.line_len = carried + input.len() - line_start;
        if self.line_len > limit {
            self.fail(DataError::LineTooLong { limit });
        }
    }

    /// Octet by octet: the normalize policy (a bare CR or LF becomes CRLF, NUL goes) or
    /// the reject policy's checks, and `long_lines = "wrap"` (CRLF SP before the limit).
    fn transform(
        &mut self,
        input: &[u8],
        limit: usize,
        policy: BareLineEndings,
        long_lines: LongLines,
    ) {
        let normalize = policy == BareLineEndings::Normalize;
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' && !normalize {
                    return self.fail(DataError::BareLineEnding);
                }
                self.out.put_slice(b"\r\n");
                self.line_len = 0;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' if !normalize => return self.fail(DataError::BareLineEnding),
                b'\n' => {
                    self.out.put_slice(b"\r\n");
                    self.line_len = 0;
                }
                b'\0' if !normalize => return self.fail(DataError::Nul),
                b'\0' => {}
                b => {
                    if self.line_len + 3 > limit {
                        if long_lines == LongLines::Reject {
                            return self.fail(DataError::LineTooLong { limit });
                        }
                        self.out.put_slice(b"\r\n ");
                        self.line_len = 1;
                    }
                    self.out.put_u8(b);
                    self.line_len += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use crate::command::{Body, Command};
    use crate::server::{CodecConfig, Frame, LongLines, Mode, ServerCodec};

    use super::*;

    /// Decodes `input`, starting a BDAT message at each BDAT command (as the driver does for
    /// an accepted one), and returns the frames with the content joined.
    fn run(codec: &mut ServerCodec, input: &[u8], body: Option<Body>) -> (Vec<Frame>, Vec<u8>) {
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        let mut content = Vec::new();
        let mut started = false;
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            match &frame {
                Frame::Command(Command::Bdat { .. }) if !started => {
                    codec.begin_bdat_message(body);
                    started = true;
                }
                Frame::DataChunk(c) => {
                    content.extend_from_slice(c);
                    continue;
                }
                Frame::ChunkEnd { last: true, .. } => started = false,
                _ => {}
            }
            frames.push(frame);
        }
        (frames, content)
    }

    fn codec(policy: BareLineEndings) -> ServerCodec {
        ServerCodec::new(CodecConfig {
            bare_line_endings: policy,
            data_chunk: 64,
            ..CodecConfig::default()
        })
    }

    #[test]
    fn a_chunk_is_its_size_in_octets_never_commands() {
        let mut c = codec(BareLineEndings::Reject);
        let input = b"BDAT 19\r\nQUIT\r\n.\r\nRSET\r\n..\r\nBDAT 0 LAST\r\nNOOP\r\n";
        let (frames, content) = run(&mut c, input, None);
        assert_eq!(
            frames,
            vec![
                Frame::Command(Command::Bdat {
                    size: 19,
                    last: false
                }),
                Frame::ChunkEnd {
                    last: false,
                    result: Ok(())
                },
                Frame::Command(Command::Bdat {
                    size: 0,
                    last: true
                }),
                Frame::ChunkEnd {
                    last: true,
                    result: Ok(())
                },
                Frame::Command(Command::Noop),
            ]
        );
        // No dot-stuffing in BDAT: content is what was sent.
        assert_eq!(content, b"QUIT\r\n.\r\nRSET\r\n..\r\n");
        assert_eq!(c.mode(), Mode::Command);
    }

    #[test]
    fn checks_hold_across_chunk_boundaries() {
        // A CRLF split between two chunks is a line ending; a CR that ends the message is bare.
        let mut c = codec(BareLineEndings::Reject);
        let (frames, content) = run(&mut c, b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd", None);
        assert_eq!(
            frames.last(),
            Some(&Frame::ChunkEnd {
                last: true,
                result: Ok(())
            })
        );
        assert_eq!(content, b"ab\r\ncd");
        let mut c = codec(BareLineEndings::Reject);
        let (frames, _) = run(&mut c, b"BDAT 3 LAST\r\nab\r", None);
        assert_eq!(
            frames.last(),
            Some(&Frame::ChunkEnd {
                last: true,
                result: Err(DataError::BareLineEnding)
            })
        );
        for (bad, error) in [
            (&b"a\nb\r\n"[..], DataError::BareLineEnding),
            (b"a\rb\r\n", DataError::BareLineEnding),
            (b"a\0b\r\n", DataError::Nul),
        ] {
            let mut c = codec(BareLineEndings::Reject);
            let mut input = format!("BDAT {} LAST\r\n", bad.len()).into_bytes();
            input.extend_from_slice(bad);
            let (frames, content) = run(&mut c, &input, None);
            assert_eq!(
                frames.last(),
                Some(&Frame::ChunkEnd {
                    last: true,
                    result: Err(error)
                }),
                "{bad:?}"
            );
            assert!(content.is_empty());
            // Normalised instead, it passes.
            let mut c = codec(BareLineEndings::Normalize);
            let (frames, content) = run(&mut c, &input, None);
            assert_eq!(
                frames.last(),
                Some(&Frame::ChunkEnd {
                    last: true,
                    result: Ok(())
                })
            );
            assert!(
                content.ends_with(b"b\r\n") && !content.contains(&0),
                "{content:?}"
            );
        }
        // BINARYMIME: opaque.
        let mut c = codec(BareLineEndings::Reject);
        let (frames, content) = run(
            &mut c,
            b"BDAT 5 LAST\r\n\0\n\r\x00x",
            Some(Body::BinaryMime),
        );
        assert_eq!(
            frames.last(),
            Some(&Frame::ChunkEnd {
                last: true,
                result: Ok(())
            })
        );
        assert_eq!(content, b"\0\n\r\x00x");
    }

    #[test]
    fn long_lines_fail_and_chunks_are_whole_lines() {
        let mut c = codec(BareLineEndings::Reject);
        let line = "x".repeat(1200);
        let input = format!("BDAT {} LAST\r\n{line}\r\n", line.len() + 2);
        let (frames, _) = run(&mut c, input.as_bytes(), None);
        assert_eq!(
            frames.last(),
            Some(&Frame::ChunkEnd {
                last: true,
                result: Err(DataError::LineTooLong { limit: 1000 })
            })
        );
        let mut c = codec(BareLineEndings::Reject);
        let body = "0123456789012345678901234567890123456789\r\n".repeat(20);
        let input = format!("BDAT {} LAST\r\n{body}", body.len());
        let mut buf = BytesMut::from(input.as_bytes());
        let mut pieces = 0;
        while let Some(frame) = c.decode(&mut buf).unwrap() {
            match frame {
                Frame::Command(_) => c.begin_bdat_message(None),
                Frame::DataChunk(piece) => {
                    assert!(piece.ends_with(b"\r\n"), "{piece:?}");
                    pieces += 1;
                }
                _ => {}
            }
        }
        assert!(pieces > 5);
    }

    #[test]
    fn long_lines_wrap_in_bdat_too() {
        let mut c = ServerCodec::new(CodecConfig {
            long_lines: LongLines::Wrap,
            data_chunk: 64,
            ..CodecConfig::default()
        });
        let body = format!("{}\r\nend\r\n", "y".repeat(2100));
        let input = format!("BDAT {} LAST\r\n{body}", body.len());
        let (frames, content) = run(&mut c, input.as_bytes(), None);
        assert_eq!(
            frames.last(),
            Some(&Frame::ChunkEnd {
                last: true,
                result: Ok(())
            })
        );
        let text = String::from_utf8(content).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() + 2 <= 1000), "{text}");
        assert_eq!(text.replace("\r\n ", ""), body);
    }

    #[test]
    fn a_refused_chunk_is_read_and_dropped() {
        let mut c = codec(BareLineEndings::Reject);
        let mut buf = BytesMut::from(&b"BDAT 6\r\nQUIT\r\nNOOP\r\n"[..]);
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::Command(Command::Bdat { .. }))
        ));
        c.discard_chunk();
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::ChunkEnd {
                last: false,
                result: Ok(())
            })
        );
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Frame::Command(Command::Noop))
        );
    }
}
