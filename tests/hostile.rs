//! Hostile input: SMTP smuggling, over-long lines, NUL, bad UTF-8. attitude answers each with a
//! clear error, runs nothing hidden, and keeps serving.

use attitude_test_support::{Attitude, Client, Recorder};

/// The published end-of-data variants (SEC Consult 2023, smtpsmug and friends): none of them
/// is `<CRLF>.<CRLF>`.
const VARIANTS: [&[u8]; 16] = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n.\n",
    b"\r\n.\x00\r\n",
    b"\n\n.\r\n",
    b"\r\n\x00.\r",
    b"\r\n\x00.\n",
    b"\r\r\n.\r\r\n",
    b"\n\r.\r\n",
];

fn smuggle(attitude: &Attitude, variant: &[u8]) -> String {
    let mut c = Client::connect(attitude.smtp);
    c.start_data("sender@example.org", &["victim@example.com"]);
    let mut payload = b"Subject: first\r\n\r\nfirst message".to_vec();
    payload.extend_from_slice(variant);
    payload.extend_from_slice(
        b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nsmuggled message\r\n.\r\n",
    );
    c.send(&payload);
    let reply = c.reply();
    // Whatever came back, the session is in sync: a fresh transaction works.
    let r = c.cmd("RSET");
    assert!(r.starts_with("250"), "after {variant:?}: {r}");
    c.cmd("QUIT");
    reply
}

fn assert_clean(content: &[u8], variant: &[u8]) {
    for (i, &b) in content.iter().enumerate() {
        assert_ne!(b, 0, "NUL reached the backend for {variant:?}");
        if b == b'\n' {
            assert!(
                i > 0 && content[i - 1] == b'\r',
                "bare LF reached the backend for {variant:?}"
            );
        }
        if b == b'\r' {
            assert_eq!(
                content.get(i + 1),
                Some(&b'\n'),
                "bare CR reached the backend for {variant:?}"
            );
        }
    }
}

#[test]
fn smuggling_variants_are_refused_by_default() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    for variant in VARIANTS {
        let reply = smuggle(&attitude, variant);
        assert!(reply.starts_with("550 5.6.0"), "{variant:?}: {reply}");
    }
    assert!(
        recorder.messages().is_empty(),
        "the backend must see neither the message nor a smuggled one"
    );
}

#[test]
fn smuggling_variants_normalized_never_make_a_second_transaction() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[smtp]\nbare_line_endings = \"normalize\"\n",
        &[recorder.addr],
    );
    for variant in VARIANTS {
        let reply = smuggle(&attitude, variant);
        assert!(reply.starts_with("250"), "{variant:?}: {reply}");
    }
    let messages = recorder.messages();
    assert_eq!(
        messages.len(),
        VARIANTS.len(),
        "one message per session, never two"
    );
    for (m, variant) in messages.iter().zip(VARIANTS) {
        assert_eq!(m.mail_from, "sender@example.org");
        assert_eq!(m.rcpt_tos, ["victim@example.com"]);
        assert_clean(&m.content, variant);
        let text = String::from_utf8_lossy(&m.content);
        // The lone dot of the variant is content, as it stands (not turned into an empty line).
        assert!(text.contains("\r\n.\r\n"), "{variant:?}: {text}");
        // The would-be second transaction is plain text inside the first message.
        assert!(text.contains("smuggled message"), "{variant:?}: {text}");
        assert!(
            text.contains("MAIL FROM:<admin@example.com>"),
            "{variant:?}: {text}"
        );
    }
}

#[test]
fn malformed_commands_get_clear_errors_and_hidden_commands_never_run() {
    let recorder = Recorder::start();
    // Many errors in one session: no tarpit here, that has its own test.
    let attitude = Attitude::start("[tarpit]\nsoft_error_limit = 0\n", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));

    // A command hidden after octet 512 of one line.
    let mut line = b"NOOP ".to_vec();
    line.resize(520, b'a');
    line.extend_from_slice(b"QUIT\r\n");
    c.send(&line);
    let r = c.reply();
    assert!(r.starts_with("500 5.5.2") && r.contains("too long"), "{r}");
    // QUIT was not run: the session still answers.
    assert!(c.cmd("NOOP").starts_with("250"));

    // A 64 KiB junk line: one reply, then back in sync.
    let mut junk = vec![b'j'; 64 * 1024];
    junk.extend_from_slice(b"\r\n");
    c.send(&junk);
    let r = c.reply();
    assert!(r.starts_with("500"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"));

    for (bad, code) in [
        (&b"MA\0IL FROM:<a@example.org>\r\n"[..], "500 5.5.2"),
        (&b"MAIL FROM:<a\0b@example.org>\r\n"[..], "500 5.5.2"),
        (&b"MAIL FROM:<\xff\xfe@example.org>\r\n"[..], "500 5.5.2"),
        ("MAİL FROM:<a@example.org>\r\n".as_bytes(), "500 5.5.2"),
        ("MAIL FROM:<ünï@example.org>\r\n".as_bytes(), "553 5.6.7"),
        (&b"XYZZY\r\n"[..], "500 5.5.1"),
        (&b"MAIL FROM:a@example.org\r\n"[..], "501 5.5.4"),
        (&b"RCPT TO:<b@example.com>\rDATA\r\n"[..], "500 5.5.2"),
    ] {
        c.send(bad);
        let r = c.reply();
        assert!(
            r.starts_with(code),
            "{:?}: {r}",
            String::from_utf8_lossy(bad)
        );
    }
    // None of it started a transaction.
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("503"));
    // attitude keeps serving new connections.
    let mut fresh = Client::connect(attitude.smtp);
    fresh.start_data("a@example.org", &["b@example.com"]);
    fresh.send(b"Subject: fine\r\n\r\nfine\r\n.\r\n");
    assert!(fresh.reply().starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
}

#[test]
fn overlong_line_in_data_fails_the_message_without_leaving_data() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    c.start_data("a@example.org", &["b@example.com"]);
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'z'; 1500]);
    // What follows the long line is still message text, not commands.
    body.extend_from_slice(b"\r\nQUIT\r\n.\r\n");
    c.send(&body);
    let r = c.reply();
    assert!(r.starts_with("552 5.6.0"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"), "session must be in sync");
    assert!(recorder.messages().is_empty());
}
