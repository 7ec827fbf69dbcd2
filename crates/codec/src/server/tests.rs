//! The server codec's DATA and command framing.

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

#[test]
fn long_lines_wrap_folds_and_keeps_the_rest() {
    let mut codec = ServerCodec::new(CodecConfig {
        long_lines: LongLines::Wrap,
        ..CodecConfig::default()
    });
    codec.set_mode(Mode::Data);
    // A 2500-octet line that starts with a stuffed dot and ends with a dot, then a lone dot
    // line that is content, then the end.
    let mut line = b"..".to_vec();
    line.resize(2500, b'x');
    line.push(b'.');
    let mut input = line.clone();
    input.extend_from_slice(b"\r\n..\r\nlast\r\n.\r\n");
    let got = frames(&mut codec, &input);
    let mut content = Vec::new();
    for f in &got[..got.len() - 1] {
        let Frame::DataChunk(c) = f else {
            panic!("{f:?}")
        };
        content.extend_from_slice(c);
    }
    assert_eq!(got.last(), Some(&Frame::DataEnd(Ok(()))));
    let text = String::from_utf8(content).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines.iter().all(|l| l.len() + 2 <= 1000), "{lines:?}");
    // Unfolded (CRLF SP removed), the line is what the client meant: one dot unstuffed.
    let unfolded = text.replace("\r\n ", "");
    assert_eq!(
        unfolded,
        format!("{}\r\n.\r\nlast\r\n", String::from_utf8_lossy(&line[1..]))
    );
}
