//! The server side codec: decodes what a client sends, encodes replies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::command::{Command, CommandError};
use crate::reply::{EnhancedStatus, Reply};

/// What to do with bare CR, bare LF and NUL inside DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum BareLineEndings {
    /// Fail the whole message at end of data (the default; RFC 5321 §2.3.8).
    #[default]
    Reject,
    /// Turn bare CR and bare LF into CRLF and drop NUL. End of data is still recognised only at
    /// a real `<CRLF>.<CRLF>`.
    Normalize,
}

/// Limits and policies of the decoder.
#[derive(Debug, Clone)]
pub struct CodecConfig {
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest text line in DATA, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// Longest AUTH continuation line, CRLF included (RFC 4954 §4: 12288).
    pub max_auth_line: usize,
    /// DATA content is emitted in chunks of about this many octets (never the whole message).
    pub data_chunk: usize,
    /// Bare CR / LF / NUL policy inside DATA.
    pub bare_line_endings: BareLineEndings,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            max_command_line: 512,
            max_text_line: 1000,
            max_auth_line: 12288,
            data_chunk: 16 * 1024,
            bare_line_endings: BareLineEndings::Reject,
        }
    }
}

/// What the decoder is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Command lines.
    Command,
    /// Message content after `354`, up to `<CRLF>.<CRLF>`; the decoder switches back to
    /// [`Mode::Command`] by itself after [`Frame::DataEnd`].
    Data,
    /// AUTH continuation lines after `334`.
    Auth,
}

/// Why a message failed inside DATA. Reported once, at end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A text line over the limit.
    #[error("line longer than {limit} octets in message")]
    LineTooLong {
        /// The limit, CRLF included.
        limit: usize,
    },
    /// Bare CR or bare LF.
    #[error("bare CR or LF in message")]
    BareLineEnding,
    /// NUL octet.
    #[error("NUL character in message")]
    Nul,
}

impl DataError {
    /// The end-of-data reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::LineTooLong { limit } => Reply::new(
                552,
                EnhancedStatus::new(5, 6, 0),
                format!("Message has a line longer than {limit} octets (RFC 5322 2.1.1)"),
            ),
            DataError::BareLineEnding => Reply::new(
                550,
                EnhancedStatus::new(5, 6, 0),
                "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
            ),
            DataError::Nul => Reply::new(
                550,
                EnhancedStatus::new(5, 6, 0),
                "Message contains NUL characters",
            ),
        }
    }
}

/// One decoded unit of client input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete, valid command line.
    Command(Command),
    /// A command line that could not be decoded; answer it with [`CommandError::reply`].
    Invalid(CommandError),
    /// One AUTH continuation line, without its line ending.
    AuthLine(Bytes),
    /// Message content: whole lines ending in CRLF, dot-unstuffed.
    DataChunk(Bytes),
    /// `<CRLF>.<CRLF>` was read: the message is complete, or failed with the first error seen.
    DataEnd(Result<(), DataError>),
}

/// `tokio_util` codec for the server side of an SMTP session.
#[derive(Debug)]
pub struct ServerCodec {
    config: CodecConfig,
    mode: Mode,
    /// Skipping the rest of an over-long line (all modes).
    discarding: bool,
    /// Last octet of the line being discarded (to know whether it ended in CRLF).
    discard_last: u8,
    /// DATA: the previous line ended with CRLF (true right after the DATA command).
    prev_crlf: bool,
    /// DATA: the first error in this message.
    data_error: Option<DataError>,
    /// DATA: content gathered for the next chunk.
    out: BytesMut,
    /// DATA: end of data seen; emit `DataEnd` after the last chunk.
    end_pending: bool,
}

impl ServerCodec {
    /// A codec in command mode.
    pub fn new(config: CodecConfig) -> Self {
        Self {
            config,
            mode: Mode::Command,
            discarding: false,
            discard_last: 0,
            prev_crlf: true,
            data_error: None,
            out: BytesMut::new(),
            end_pending: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches mode: to [`Mode::Data`] after a 354 reply, [`Mode::Auth`] after 334,
    /// [`Mode::Command`] when an AUTH exchange ends.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        if mode == Mode::Data {
            self.prev_crlf = true;
            self.data_error = None;
            self.end_pending = false;
            self.out = BytesMut::new();
        }
    }

    /// Skips input up to and including the next LF. Returns true once the line is over.
    fn discard(&mut self, src: &mut BytesMut) -> bool {
        match memchr::memchr(b'\n', src) {
            Some(i) => {
                self.discard_last = if i > 0 { src[i - 1] } else { self.discard_last };
                src.advance(i + 1);
                self.discarding = false;
                true
            }
            None => {
                if let Some(&last) = src.last() {
                    self.discard_last = last;
                }
                src.clear();
                false
            }
        }
    }

    fn decode_line_mode(&mut self, src: &mut BytesMut, limit: usize) -> Option<Frame> {
        if self.discarding && !self.discard(src) {
            return None;
        }
        let window = &src[..src.len().min(limit)];
        let Some(i) = memchr::memchr(b'\n', window) else {
            if src.len() >= limit {
                // One reply for the whole over-long line; its tail is never run.
                self.discarding = true;
                return Some(Frame::Invalid(CommandError::LineTooLong { limit }));
            }
            return None;
        };
        let line = src.split_to(i + 1);
        Some(match self.mode {
            Mode::Auth => {
                let mut line = line.freeze();
                let end = if line.ends_with(b"\r\n") { 2 } else { 1 };
                line.truncate(line.len() - end);
                Frame::AuthLine(line)
            }
            _ => match Command::parse(&line) {
                Ok(cmd) => Frame::Command(cmd),
                Err(e) => Frame::Invalid(e),
            },
        })
    }

    fn fail(&mut self, error: DataError) {
        self.data_error.get_or_insert(error);
        // Nothing more of a failed message is worth passing on.
        self.out.clear();
    }

    fn take_chunk(&mut self) -> Option<Frame> {
        (!self.out.is_empty()).then(|| Frame::DataChunk(self.out.split().freeze()))
    }

    fn decode_data(&mut self, src: &mut BytesMut) -> Option<Frame> {
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
                if self.out.len() >= self.config.data_chunk {
                    return self.take_chunk();
                }
                continue;
            }
            let window = &src[..src.len().min(limit)];
            let Some(i) = memchr::memchr(b'\n', window) else {
                if src.len() >= limit {
                    self.fail(DataError::LineTooLong { limit });
                    self.discarding = true;
                    continue;
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
                let plain = crlf && !bare_cr && !nul && content.first() != Some(&b'.');
                let first = &content[..memchr::memchr(b'\r', content).unwrap_or(content.len())];
                let lone_dot = first.iter().filter(|&&b| b != 0).eq(b".".iter());
                let content = if lone_dot {
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

impl Decoder for ServerCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        Ok(match self.mode {
            Mode::Command => {
                let limit = self.config.max_command_line;
                self.decode_line_mode(src, limit)
            }
            Mode::Auth => {
                let limit = self.config.max_auth_line;
                self.decode_line_mode(src, limit)
            }
            Mode::Data => self.decode_data(src),
        })
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        // A connection that ends mid-line or mid-message yields nothing more: an unfinished
        // message is never complete.
        let frame = self.decode(src)?;
        if frame.is_none() {
            src.clear();
            if self.mode == Mode::Data {
                self.out.clear();
            }
        }
        Ok(frame)
    }
}

impl Encoder<&Reply> for ServerCodec {
    type Error = std::io::Error;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), Self::Error> {
        reply.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut ServerCodec, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn data_codec(policy: BareLineEndings) -> ServerCodec {
        let mut c = ServerCodec::new(CodecConfig {
            bare_line_endings: policy,
            ..CodecConfig::default()
        });
        c.set_mode(Mode::Data);
        c
    }

    #[test]
    fn long_command_line_gets_one_reply_and_its_tail_is_never_run() {
        let mut codec = ServerCodec::new(CodecConfig::default());
        let mut input = b"NOOP ".to_vec();
        input.resize(600, b'x');
        input.extend_from_slice(b" QUIT\r\nRSET\r\n");
        let got = frames(&mut codec, &input);
        assert_eq!(
            got,
            vec![
                Frame::Invalid(CommandError::LineTooLong { limit: 512 }),
                Frame::Command(Command::Rset)
            ]
        );
    }

    #[test]
    fn data_is_unstuffed_and_ends_only_at_crlf_dot_crlf() {
        let mut codec = data_codec(BareLineEndings::Reject);
        let got = frames(&mut codec, b"..leading\r\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(
            got,
            vec![
                Frame::DataChunk(Bytes::from_static(b".leading\r\nbody\r\n")),
                Frame::DataEnd(Ok(())),
                Frame::Command(Command::Quit),
            ]
        );
    }

    #[test]
    fn bare_lf_dot_does_not_end_data_and_fails_the_message() {
        let mut codec = data_codec(BareLineEndings::Reject);
        let got = frames(&mut codec, b"a\n.\nMAIL FROM:<x@y>\r\n\r\n.\r\n");
        assert_eq!(got, vec![Frame::DataEnd(Err(DataError::BareLineEnding))]);
        assert_eq!(codec.mode(), Mode::Command);
    }

    #[test]
    fn a_normalised_lone_dot_stays_a_dot() {
        for input in [
            &b"a\n.\nb\r\n.\r\n"[..],
            b"a\n.\r\nb\r\n.\r\n",
            b"a\r.\rb\r\n.\r\n",
            b"a\r\n.\rb\r\n.\r\n",
            b"a\r\n.\0\r\nb\r\n.\r\n",
            b"a\r\n\0.\r\nb\r\n.\r\n",
        ] {
            let mut codec = data_codec(BareLineEndings::Normalize);
            let got = frames(&mut codec, input);
            assert_eq!(
                got,
                vec![
                    Frame::DataChunk(Bytes::from_static(b"a\r\n.\r\nb\r\n")),
                    Frame::DataEnd(Ok(())),
                ],
                "{input:?}"
            );
        }
        // A stuffed dot line is still unstuffed.
        let mut codec = data_codec(BareLineEndings::Normalize);
        let got = frames(&mut codec, b"..\n..x\r\n.\r\n");
        assert_eq!(
            got,
            vec![
                Frame::DataChunk(Bytes::from_static(b".\r\n.x\r\n")),
                Frame::DataEnd(Ok(())),
            ]
        );
    }

    #[test]
    fn normalize_turns_bare_endings_into_content() {
        let mut codec = data_codec(BareLineEndings::Normalize);
        let got = frames(&mut codec, b"a\n.\nb\rc\0d\r\n.\r\n");
        assert_eq!(
            got,
            vec![
                Frame::DataChunk(Bytes::from_static(b"a\r\n.\r\nb\r\ncd\r\n")),
                Frame::DataEnd(Ok(())),
            ]
        );
    }

    #[test]
    fn long_data_line_fails_at_end_without_leaving_data_mode() {
        let mut codec = data_codec(BareLineEndings::Reject);
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\nMAIL FROM:<a@b>\r\n.\r\n");
        let got = frames(&mut codec, &input);
        assert_eq!(
            got,
            vec![Frame::DataEnd(Err(DataError::LineTooLong { limit: 1000 }))]
        );
    }

    #[test]
    fn auth_lines() {
        let mut codec = ServerCodec::new(CodecConfig::default());
        codec.set_mode(Mode::Auth);
        let got = frames(&mut codec, b"dXNlcg==\r\n");
        assert_eq!(got, vec![Frame::AuthLine(Bytes::from_static(b"dXNlcg=="))]);
    }

    #[test]
    fn chunks_are_bounded() {
        let mut codec = ServerCodec::new(CodecConfig {
            data_chunk: 100,
            ..CodecConfig::default()
        });
        codec.set_mode(Mode::Data);
        let mut input = Vec::new();
        for _ in 0..50 {
            input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let got = frames(&mut codec, &input);
        assert!(got.len() > 10);
        for f in &got[..got.len() - 1] {
            let Frame::DataChunk(c) = f else {
                panic!("{f:?}")
            };
            assert!(c.len() <= 100 + 42);
        }
    }
}
