//! Property tests: the decoder does not care how its input is split, and encodings round-trip.

use attitude_codec::{
    Body, ClientCodec, CodecConfig, Command, Frame, MailFrom, Mode, Param, RcptTo, Reply,
    ServerCodec, dot_stuff_into,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `pieces` one after the other, as a session driver would: switches to DATA mode after a
/// DATA command (as if the server answered 354), starts a BDAT message at every BDAT command (as
/// if accepted; the codec frames the chunk by itself), and merges adjacent DATA chunks (their
/// boundaries depend on the reads, their content must not).
/// The content of a failed or unfinished message is dropped.
fn decode_pieces(pieces: &[&[u8]], config: &CodecConfig) -> Vec<Frame> {
    let mut codec = ServerCodec::new(config.clone());
    let mut buf = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            if frame == Frame::Command(Command::Data) {
                codec.set_mode(Mode::Data);
            }
            if let Frame::Command(Command::Bdat { .. }) = frame {
                codec.begin_bdat_message(None);
            }
            match (frames.last_mut(), frame) {
                (Some(Frame::DataChunk(prev)), Frame::DataChunk(next)) => {
                    let mut joined = BytesMut::from(&prev[..]);
                    joined.extend_from_slice(&next);
                    *prev = joined.freeze();
                }
                (_, frame @ (Frame::DataEnd(Err(_)) | Frame::ChunkEnd { result: Err(_), .. })) => {
                    // A failed message's content is thrown away; how much of it was emitted
                    // before the failure was seen depends on the reads.
                    if let Some(Frame::DataChunk(_)) = frames.last() {
                        frames.pop();
                    }
                    frames.push(frame);
                }
                (_, frame) => frames.push(frame),
            }
        }
    }
    if matches!(codec.mode(), Mode::Data | Mode::Bdat)
        && matches!(frames.last(), Some(Frame::DataChunk(_)))
    {
        // An unfinished message: what was emitted of it depends on the reads too.
        frames.pop();
    }
    frames
}

fn smtpish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"EHLO a.example\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example> SIZE=10\r\n".to_vec()),
        Just(b"RCPT TO:<c@d.example>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"..dot\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r.\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        Just(b"BDAT 9\r\n".to_vec()),
        Just(b"BDAT 70\r\n".to_vec()),
        Just(b"BDAT 3 LAST\r\n".to_vec()),
        Just(b"BDAT 0 LAST\r\n".to_vec()),
        Just(vec![b'x'; 700]),
        Just(vec![b'y'; 1200]),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(token, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn splitting_does_not_change_frames(input in smtpish(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12), normalize in any::<bool>(), wrap in any::<bool>()) {
        let config = CodecConfig {
            data_chunk: 64,
            bare_line_endings: if normalize {
                attitude_codec::BareLineEndings::Normalize
            } else {
                attitude_codec::BareLineEndings::Reject
            },
            long_lines: if wrap {
                attitude_codec::LongLines::Wrap
            } else {
                attitude_codec::LongLines::Reject
            },
            ..CodecConfig::default()
        };
        let whole = decode_pieces(&[&input], &config);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&input[start..p]);
            start = p;
        }
        pieces.push(&input[start..]);
        prop_assert_eq!(decode_pieces(&pieces, &config), whole.clone());
        // One byte at a time, the worst case.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(decode_pieces(&bytes, &config), whole);
    }

    #[test]
    fn data_content_round_trips(lines in prop::collection::vec("[ -~]{0,200}", 0..40)) {
        // Content as the decoder emits it: CRLF lines, unstuffed.
        let mut content = Vec::new();
        for line in &lines {
            content.extend_from_slice(line.as_bytes());
            content.extend_from_slice(b"\r\n");
        }
        let mut wire = BytesMut::from(&b"DATA\r\n"[..]);
        let mut at_start = true;
        dot_stuff_into(&content, &mut wire, &mut at_start);
        wire.extend_from_slice(b".\r\n");
        let frames = decode_pieces(&[&wire], &CodecConfig::default());
        let mut expected = vec![Frame::Command(Command::Data)];
        if !content.is_empty() {
            expected.push(Frame::DataChunk(Bytes::from(content)));
        }
        expected.push(Frame::DataEnd(Ok(())));
        prop_assert_eq!(frames, expected);
    }

    #[test]
    fn commands_round_trip(
        local in "[a-zA-Z0-9_+-]{1,30}",
        domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}",
        size in proptest::option::of(1u64..100_000_000),
        eight in proptest::option::of(any::<bool>()),
        which in 0usize..6,
    ) {
        let address = format!("{local}@{domain}");
        let cmd = match which {
            0 => Command::Ehlo(domain.clone()),
            1 => Command::Helo(domain.clone()),
            2 => Command::Mail(MailFrom {
                address,
                size: size.and_then(std::num::NonZeroU64::new),
                body: eight.map(|e| if e { Body::EightBitMime } else { Body::SevenBit }),
                smtputf8: false,
                params: if eight == Some(true) {
                    vec![Param::new("RET", Some("FULL")), Param::new("ENVID", Some(&local.replace('+', "+2B")))]
                } else {
                    Vec::new()
                },
            }),
            3 => Command::Rcpt(RcptTo {
                address,
                params: if size.is_some() {
                    vec![Param::new("NOTIFY", Some("SUCCESS,DELAY"))]
                } else {
                    Vec::new()
                },
            }),
            4 => Command::Vrfy(local.clone()),
            _ => Command::Rset,
        };
        let mut client = ClientCodec::new();
        let mut wire = BytesMut::new();
        client.encode(&cmd, &mut wire).unwrap();
        let frames = decode_pieces(&[&wire], &CodecConfig::default());
        prop_assert_eq!(frames, vec![Frame::Command(cmd)]);
    }

    #[test]
    fn replies_round_trip(code in 200u16..600, text in prop::collection::vec("[ -~]{0,80}", 1..5), with_status in any::<bool>()) {
        let status = (with_status && code / 100 != 3).then(|| attitude_codec::EnhancedStatus::new((code / 100) as u8, 1, 2));
        let mut reply = Reply::from_parts(code, status, text.iter().map(|t| t.trim_start().to_owned().into()).collect());
        if status.is_none() {
            // Text that looks like a status code would be read as one.
            reply = Reply::from_parts(code, None, text.iter().map(|t| format!("x{}", t.trim_start()).into()).collect());
        }
        let mut server = ServerCodec::new(CodecConfig::default());
        let mut wire = BytesMut::new();
        server.encode(&reply, &mut wire).unwrap();
        let mut client = ClientCodec::new();
        let decoded = client.decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(decoded, reply);
    }
}
