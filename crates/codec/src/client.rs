//! The client side codec: encodes commands, decodes (multi-line) replies. Used by attitude to
//! talk to backends, and by tests to talk to attitude.

use std::borrow::Cow;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::command::Command;
use crate::reply::{EnhancedStatus, Reply};

/// Longest reply line accepted from a peer (RFC 5321 says 512; real servers go further).
pub(crate) const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply.
const MAX_REPLY_LINES: usize = 128;

/// A peer's reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientCodecError {
    /// I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not an SMTP reply.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// `tokio_util` codec for the client side of an SMTP session.
#[derive(Debug, Default)]
pub struct ClientCodec {
    code: Option<u16>,
    status: Option<EnhancedStatus>,
    lines: Vec<Cow<'static, str>>,
}

impl ClientCodec {
    /// A new codec.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Decoder for ClientCodec {
    type Item = Reply;
    type Error = ClientCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, Self::Error> {
        loop {
            let window = &src[..src.len().min(MAX_REPLY_LINE)];
            let Some(i) = memchr::memchr(b'\n', window) else {
                if src.len() >= MAX_REPLY_LINE {
                    return Err(ClientCodecError::Malformed("reply line too long"));
                }
                return Ok(None);
            };
            let line = src.split_to(i + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ClientCodecError::Malformed("no reply code"));
            }
            let code = (line[0] - b'0') as u16 * 100
                + (line[1] - b'0') as u16 * 10
                + (line[2] - b'0') as u16;
            if !(200..600).contains(&code) {
                return Err(ClientCodecError::Malformed("reply code out of range"));
            }
            if *self.code.get_or_insert(code) != code {
                return Err(ClientCodecError::Malformed(
                    "reply code changed inside a reply",
                ));
            }
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ClientCodecError::Malformed("bad reply separator")),
            };
            let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default());
            let text = match EnhancedStatus::parse_prefix(&text) {
                Some((status, rest)) if status.class as u16 == code / 100 => {
                    self.status.get_or_insert(status);
                    rest.to_owned()
                }
                _ => text.into_owned(),
            };
            if self.lines.len() >= MAX_REPLY_LINES {
                return Err(ClientCodecError::Malformed("too many reply lines"));
            }
            self.lines.push(Cow::Owned(text));
            if last {
                let reply =
                    Reply::from_parts(code, self.status.take(), std::mem::take(&mut self.lines));
                self.code = None;
                return Ok(Some(reply));
            }
            if src.is_empty() {
                return Ok(None);
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, Self::Error> {
        match self.decode(src)? {
            Some(reply) => Ok(Some(reply)),
            None if src.has_remaining() || self.code.is_some() => {
                Err(ClientCodecError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed mid-reply",
                )))
            }
            None => Ok(None),
        }
    }
}

impl Encoder<&Command> for ClientCodec {
    type Error = ClientCodecError;

    fn encode(&mut self, cmd: &Command, dst: &mut BytesMut) -> Result<(), Self::Error> {
        cmd.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_reply() {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::from(&b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"[..]);
        let reply = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.lines(), ["mx.example", "PIPELINING", "SIZE 1000"]);
    }

    #[test]
    fn split_reply_and_status() {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::from(&b"451-4.3.0 first\r\n"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"451 4.3.0 second\r\n");
        let reply = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(reply.status(), Some(EnhancedStatus::new(4, 3, 0)));
        assert_eq!(reply.lines(), ["first", "second"]);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::from(&b"hello\r\n"[..]);
        assert!(codec.decode(&mut buf).is_err());
    }
}
