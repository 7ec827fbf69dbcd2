//! The server side codec: decodes what a client sends, encodes replies.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

mod data;
#[cfg(test)]
mod tests;

use crate::bdat::{At, BdatChunk, BdatMessage};
use crate::command::{Body, Command, CommandError};
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

/// What to do with a message line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum LongLines {
    /// Fail the whole message at end of data (552 5.6.0; Exim's default).
    #[default]
    Reject,
    /// Fold it: CRLF SP before the limit, so the message passes (Postfix's way).
    Wrap,
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
    /// Lines over `max_text_line` inside DATA.
    pub long_lines: LongLines,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            max_command_line: 512,
            max_text_line: 1000,
            max_auth_line: 12288,
            data_chunk: 16 * 1024,
            bare_line_endings: BareLineEndings::Reject,
            long_lines: LongLines::Reject,
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
    /// The octets of a BDAT chunk; the decoder enters this mode by itself when it decodes a
    /// BDAT command and leaves it after [`Frame::ChunkEnd`].
    Bdat,
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
    /// A BDAT chunk was read whole (its content came as [`Frame::DataChunk`]s, unless it was
    /// discarded); `result` is the message's first error so far.
    ChunkEnd {
        /// `BDAT ... LAST`: the message is complete, or failed.
        last: bool,
        /// The first error in the message.
        result: Result<(), DataError>,
    },
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
    /// DATA: the next octets continue a line folded by `long_lines = "wrap"`.
    continuing: bool,
    /// BDAT: the chunk being read (boxed, as the message).
    chunk: Option<Box<BdatChunk>>,
    /// BDAT: the message its chunks belong to ([`ServerCodec::begin_bdat_message`]); boxed:
    /// an idle session holds a codec, rarely a BDAT message.
    bdat: Option<Box<BdatMessage>>,
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
            continuing: false,
            chunk: None,
            bdat: None,
        }
    }

    /// Starts a BDAT message: called once the first BDAT command of a transaction is
    /// accepted (before its chunk is decoded). Its chunks are checked as one message.
    pub fn begin_bdat_message(&mut self, body: Option<Body>) {
        self.bdat = Some(Box::new(BdatMessage::new(body == Some(Body::BinaryMime))));
    }

    /// Drops the chunk of the BDAT command just decoded (the command was refused): its octets
    /// are read and nothing of them is emitted but [`Frame::ChunkEnd`].
    pub fn discard_chunk(&mut self) {
        if let Some(chunk) = self.chunk.as_mut() {
            chunk.discard = true;
        }
    }

    /// BDAT: a piece of the chunk, or its end.
    fn decode_bdat(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let limit = self.config.max_text_line;
        let policy = self.config.bare_line_endings;
        let long_lines = self.config.long_lines;
        let size = self.config.data_chunk;
        loop {
            let chunk = self.chunk.as_mut()?;
            let message = self.bdat.as_mut().filter(|_| !chunk.discard);
            if chunk.remaining > 0 {
                if src.is_empty() {
                    return None;
                }
                let n = (chunk.remaining.min(size as u64) as usize).min(src.len());
                let piece = src.split_to(n).freeze();
                chunk.remaining -= n as u64;
                let at = match (chunk.remaining, chunk.last) {
                    (0, true) => At::MessageEnd,
                    (0, false) => At::ChunkEnd,
                    _ => At::Inside,
                };
                chunk.flushed = chunk.remaining == 0;
                if let Some(out) =
                    message.and_then(|m| m.feed(piece, limit, policy, long_lines, size, at))
                {
                    return Some(Frame::DataChunk(out));
                }
                continue;
            }
            if !chunk.flushed {
                // A chunk of size 0 (`BDAT 0 LAST`).
                chunk.flushed = true;
                let at = if chunk.last {
                    At::MessageEnd
                } else {
                    At::ChunkEnd
                };
                if let Some(out) =
                    message.and_then(|m| m.feed(Bytes::new(), limit, policy, long_lines, size, at))
                {
                    return Some(Frame::DataChunk(out));
                }
            }
            let last = chunk.last;
            self.chunk = None;
            self.mode = Mode::Command;
            let error = if last {
                self.bdat.take().and_then(|m| m.error)
            } else {
                self.bdat.as_ref().and_then(|m| m.error)
            };
            return Some(Frame::ChunkEnd {
                last,
                result: error.map_or(Ok(()), Err),
            });
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
            self.continuing = false;
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
                Ok(cmd) => {
                    if let Command::Bdat { size, last } = cmd {
                        // The chunk follows the command line whatever the reply will be: its
                        // octets are never read as commands.
                        self.chunk = Some(Box::new(BdatChunk {
                            remaining: size,
                            last,
                            discard: false,
                            flushed: false,
                        }));
                        self.mode = Mode::Bdat;
                    }
                    Frame::Command(cmd)
                }
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
            Mode::Bdat => self.decode_bdat(src),
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
