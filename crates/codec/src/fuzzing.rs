//! The fuzz target's body, shared with the corpus replay test so every corpus file is also a
//! regression test under plain `cargo test`.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::{
    BareLineEndings, Body, ClientCodec, CodecConfig, Command, Frame, LongLines, Mode, ServerCodec,
};

/// Decodes `data` (the first byte picks the bare-line-ending and long-line policies and the
/// read size), checking the decoder's invariants; panics when one breaks:
/// - DATA chunks are canonical (CRLF only, no NUL), so nothing can end DATA early downstream;
///   BDAT content is too (but for BINARYMIME, and the last line of a message may lack CRLF);
/// - a BDAT chunk is exactly its size: the frame after it is its `ChunkEnd`, and nothing of it
///   is decoded as a command;
/// - a decoded command that can be relayed survives encode + decode unchanged;
/// - the input buffer never holds more than one line limit plus one read.
pub fn decode_all(data: &[u8]) {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let config = CodecConfig {
        data_chunk: 64,
        bare_line_endings: if knobs & 1 == 0 {
            BareLineEndings::Reject
        } else {
            BareLineEndings::Normalize
        },
        long_lines: if knobs & 0x80 == 0 {
            LongLines::Reject
        } else {
            LongLines::Wrap
        },
        ..CodecConfig::default()
    };
    let read = 1 + ((knobs >> 1) & 0x3f) as usize * 7;
    let limit = config.max_auth_line.max(config.max_command_line) + read;
    let mut codec = ServerCodec::new(config);
    let mut buf = BytesMut::new();
    // BDAT: whether the chunk being read is opaque (BINARYMIME), and what is left of it.
    let mut binary = false;
    let mut chunk_left: Option<u64> = None;
    for piece in input.chunks(read) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf).expect("decode never fails") {
            if let Some(left) = chunk_left {
                match &frame {
                    Frame::DataChunk(c) => {
                        // Content is never more than the chunk's octets (normalising and
                        // folding add at most two per three).
                        assert!(
                            c.len() as u64 <= left.saturating_mul(2).saturating_add(64),
                            "chunk overran its size"
                        );
                        if !binary {
                            check_content(c, false);
                        }
                        continue;
                    }
                    Frame::ChunkEnd { .. } => chunk_left = None,
                    other => panic!("a BDAT chunk was read as {other:?}"),
                }
            }
            check(&frame);
            match frame {
                Frame::Command(Command::Bdat { size, .. }) => {
                    // Accepted or refused, as a server would answer; some opaque.
                    if size % 2 == 0 {
                        binary = size % 4 == 2;
                        codec.begin_bdat_message(binary.then_some(Body::BinaryMime));
                    } else {
                        codec.discard_chunk();
                    }
                    chunk_left = Some(size);
                }
                Frame::Command(Command::Data) => codec.set_mode(Mode::Data),
                Frame::Command(Command::Auth { .. }) => codec.set_mode(Mode::Auth),
                Frame::AuthLine(line) if line.as_ref() == b"*" => codec.set_mode(Mode::Command),
                _ => {}
            }
        }
        assert!(buf.len() <= limit, "buffer grew to {} octets", buf.len());
    }
    let _ = codec.decode_eof(&mut buf);
}

/// Content is whole canonical lines: CRLF only, no NUL (`whole`: it ends with CRLF).
fn check_content(chunk: &[u8], whole: bool) {
    if whole {
        assert!(chunk.ends_with(b"\r\n"), "chunk of partial lines");
    }
    for (i, &b) in chunk.iter().enumerate() {
        assert_ne!(b, 0, "NUL in a chunk");
        if b == b'\n' {
            assert!(i > 0 && chunk[i - 1] == b'\r', "bare LF in a chunk");
        }
        if b == b'\r' {
            assert_eq!(chunk.get(i + 1), Some(&b'\n'), "bare CR in a chunk");
        }
    }
}

fn check(frame: &Frame) {
    match frame {
        Frame::DataChunk(chunk) => check_content(chunk, true),
        // Verbs attitude refuses are never relayed, so their arguments are not kept.
        Frame::Command(Command::Unsupported(_)) => {}
        Frame::Command(cmd) => {
            let mut wire = BytesMut::new();
            cmd.encode(&mut wire);
            let again = Command::parse(&wire);
            assert_eq!(again.as_ref(), Ok(cmd), "round trip of {wire:?}");
        }
        _ => {}
    }
}

/// Reads `data` as what a hostile backend sends (the first byte picks the read size), with the
/// reply reader attitude uses on backend connections; panics when an invariant breaks:
/// - it never panics on any input, and an error ends the connection (nothing is read after it);
/// - the buffer never holds more than one reply line limit plus one read;
/// - what a client is told of a decoded reply reads back as itself (encode, decode, encode
///   gives the same wire text) when its lines, with the status on each, fit the line limit;
///   each reply is read whole: the reader never hands out part of one.
pub fn replies_all(data: &[u8]) {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let read = 1 + knobs as usize * 3;
    let mut codec = ClientCodec::new();
    let mut buf = BytesMut::new();
    for piece in input.chunks(read) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(reply)) => {
                    let wire = reply.to_wire();
                    // Re-encoding puts the status on every line; a line the backend sent near
                    // the limit can then exceed it: nothing to compare.
                    let longest = wire.split("\r\n").map(str::len).max().unwrap_or(0);
                    if longest + 2 > crate::client::MAX_REPLY_LINE {
                        continue;
                    }
                    let mut again = BytesMut::from(wire.as_bytes());
                    let decoded = ClientCodec::new().decode(&mut again);
                    // What a client is told reads back as itself (bytes a backend should not
                    // send, such as invalid UTF-8 or NUL, are already replaced in `wire`).
                    assert!(
                        matches!(&decoded, Ok(Some(r)) if r.to_wire() == wire) && again.is_empty(),
                        "round trip of {wire:?}: {decoded:?}"
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.len() <= crate::client::MAX_REPLY_LINE + read,
            "buffer grew to {} octets",
            buf.len()
        );
    }
}
