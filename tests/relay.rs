//! Real clients through attitude to real backends: nothing lost, nothing changed, the backend's
//! own verdict handed back.

use std::process::Command;
use std::time::Duration;

use attitude_test_support::{
    Attitude, Client, Recorder, SmtpSink, require_tool, scratch_dir, smtplib, wait_for,
};

/// A message that exercises dot-stuffing, 8-bit UTF-8 and a long but legal line (998 octets).
fn tricky_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: alice@example.org\r\nTo: bob@example.com\r\n");
    m.extend_from_slice("Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n".as_bytes());
    m.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n\r\n");
    m.extend_from_slice(b"first line\r\n.\r\n..\r\n.leading dot\r\n...three\r\n");
    m.extend_from_slice("ünïcödé — 8-bit text ✓\r\n".as_bytes());
    m.extend_from_slice(&[b'L'; 998]);
    m.extend_from_slice(b"\r\n \r\n\t\r\nlast line\r\n");
    m
}

#[test]
fn swaks_through_attitude_to_smtp_sink() {
    let swaks = require_tool("swaks");
    let sink = SmtpSink::start(&[]);
    let attitude = Attitude::start("", &[sink.addr]);
    let file = scratch_dir("swaks").join("message.eml");
    std::fs::write(&file, tricky_message()).unwrap();
    let out = Command::new(swaks)
        .args(["--server", &attitude.smtp.to_string()])
        .args(["--from", "alice@example.org", "--to", "bob@example.com"])
        .args(["--helo", "swaks.test", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(transcript.contains("<-  250 2.0.0"), "{transcript}");
    assert!(wait_for(Duration::from_secs(5), || sink.count() == 1));
    let dump = sink.dumps().remove(0);
    let dump = String::from_utf8(dump).expect("UTF-8 intact");
    assert!(dump.contains("X-Mail-Args: <alice@example.org>"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <bob@example.com>"), "{dump}");
    // smtp-sink stores lines with LF endings, dot-unstuffed.
    let expected = String::from_utf8(tricky_message())
        .unwrap()
        .replace("\r\n", "\n");
    let body_start = expected.find("\n\n").unwrap();
    assert!(
        dump.contains(&expected[body_start..]),
        "body changed on the way:\n{dump}"
    );
}

#[test]
fn smtplib_through_attitude_to_aiosmtpd_byte_exact() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let file = scratch_dir("smtplib").join("message.eml");
    std::fs::write(&file, tricky_message()).unwrap();

    let (ok, out) = smtplib(
        "send",
        attitude.smtp,
        "alice@example.org",
        "bob@example.com,carol@example.net",
        &file,
    );
    assert!(ok, "smtplib sendmail failed:\n{out}");
    let (ok, out) = smtplib(
        "pipelined",
        attitude.smtp,
        "dave@example.org",
        "erin@example.com,frank@example.com",
        &file,
    );
    assert!(ok, "pipelined session failed:\n{out}");
    // Replies in order: MAIL, RCPT, RCPT, DATA.
    let codes: Vec<&str> = out.lines().take(4).map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "250", "354"], "{out}");

    let messages = recorder.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].mail_from, "alice@example.org");
    assert_eq!(
        messages[0].rcpt_tos,
        ["bob@example.com", "carol@example.net"]
    );
    assert_eq!(messages[1].mail_from, "dave@example.org");
    assert_eq!(
        messages[1].rcpt_tos,
        ["erin@example.com", "frank@example.com"]
    );
    for m in &messages {
        assert_eq!(
            String::from_utf8_lossy(&m.content),
            String::from_utf8_lossy(&tricky_message()),
            "content must arrive byte for byte"
        );
        assert_eq!(m.content, tricky_message());
    }
}

#[test]
fn smtp_source_2000_messages_all_counted_by_smtp_sink() {
    let source = require_tool("/usr/sbin/smtp-source");
    let sink = SmtpSink::start(&[]);
    let attitude = Attitude::start("", &[sink.addr]);
    let out = Command::new(source)
        .args([
            "-s",
            "10",
            "-m",
            "2000",
            "-l",
            "1024",
            "-f",
            "load@example.org",
        ])
        .args(["-t", "sink@example.com", "-M", "source.test"])
        .arg(attitude.smtp.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(10), || sink.count() == 2000),
        "smtp-sink counted {} messages, not 2000",
        sink.count()
    );
    assert_eq!(
        attitude.metric("attitude_messages_total{outcome=\"accepted\"}"),
        Some(2000.0)
    );
}

#[test]
fn backend_refusals_reach_the_client_unchanged_in_class() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = c.cmd("RCPT TO:<tempfail@example.com>");
    assert!(r.starts_with("451 4.3.0"), "{r}");
    let r = c.cmd("RCPT TO:<reject@example.com>");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // Without an accepted recipient DATA is refused by attitude itself.
    let r = c.cmd("DATA");
    assert!(r.starts_with("554 5.5.1"), "{r}");
    assert!(c.cmd("RCPT TO:<ok@example.com>").starts_with("250"));

    for (fault, class) in [("data451", "451"), ("data550", "550")] {
        let r = c.cmd("DATA");
        assert!(r.starts_with("354"), "{r}");
        c.send(format!("X-Fault: {fault}\r\nSubject: x\r\n\r\nbody\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with(class), "{fault}: {r}");
        // The transaction is over: a new one.
        assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<ok@example.com>").starts_with("250"));
    }
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(
        recorder.messages().is_empty(),
        "a refused message was stored"
    );
    assert_eq!(
        attitude.metric("attitude_messages_total{outcome=\"deferred\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_messages_total{outcome=\"rejected\"}"),
        Some(1.0)
    );
}

#[test]
fn backend_killed_mid_data_gives_4xx_and_nothing_is_recorded() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: doomed\r\n\r\nfirst part\r\n");
    std::thread::sleep(Duration::from_millis(200));
    recorder.peer.signal("KILL");
    std::thread::sleep(Duration::from_millis(200));
    // More content, then the end: attitude must not say 250.
    for _ in 0..50 {
        c.send(&[b'x'; 900]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("451 4.4.2"), "{r}");
    assert!(recorder.messages().is_empty());
    // The session goes on; with the only backend gone the next MAIL is deferred too.
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("451 4.4.1"), "{r}");
}

#[test]
fn dead_backend_is_skipped_and_none_left_means_451_at_mail() {
    let recorder = Recorder::start();
    // A port with nothing behind it.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", attitude_test_support::free_port())
        .parse()
        .unwrap();
    let attitude = Attitude::start("", &[dead, recorder.addr]);
    for i in 0..4 {
        let mut c = Client::connect(attitude.smtp);
        c.start_data("a@example.org", &["b@example.com"]);
        c.send(format!("Subject: {i}\r\n\r\nbody\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with("250"), "message {i}: {r}");
        c.cmd("QUIT");
    }
    assert_eq!(recorder.messages().len(), 4);

    // Without health checks, a dead backend is found at MAIL: 451, and the failure counted.
    let nobody = Attitude::start("[backend.health]\nenabled = false\n", &[dead]);
    let mut c = Client::connect(nobody.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert!(
        nobody
            .metric(&format!(
                "attitude_backend_failures_total{{pool=\"default\",backend=\"{dead}\",kind=\"connect\"}}"
            ))
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn size_limits_are_enforced_before_the_backend_commits() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[limits]\nmax_message_size = 10000\n", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=20000");
    assert!(r.starts_with("552 5.3.4"), "{r}");

    // A body over the limit, without a SIZE hint: refused after end of data.
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..30 {
        c.send(&[b'y'; 998]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Still in sync: a small message goes through.
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    let messages = recorder.messages();
    assert_eq!(messages.len(), 1, "only the small message may be stored");
    assert!(String::from_utf8_lossy(&messages[0].content).contains("Subject: small"));
}

#[test]
fn swaks_to_aiosmtpd_and_pipelined_smtplib_to_smtp_sink() {
    let swaks = require_tool("swaks");
    let recorder = Recorder::start();
    let sink = SmtpSink::start(&[]);
    let to_recorder = Attitude::start("", &[recorder.addr]);
    let to_sink = Attitude::start("", &[sink.addr]);
    let file = scratch_dir("cross").join("message.eml");
    std::fs::write(&file, tricky_message()).unwrap();

    let out = Command::new(swaks)
        .args(["--server", &to_recorder.smtp.to_string(), "--pipeline"])
        .args([
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.com,carol@example.com",
        ])
        .arg("--data")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].rcpt_tos, ["bob@example.com", "carol@example.com"]);
    // swaks sends the file's lines as they are (it may add a final empty line).
    assert!(
        m[0].content.starts_with(&tricky_message()),
        "{}",
        String::from_utf8_lossy(&m[0].content)
    );

    let (ok, out) = smtplib(
        "pipelined",
        to_sink.smtp,
        "dave@example.org",
        "erin@example.com",
        &file,
    );
    assert!(ok, "{out}");
    assert!(wait_for(Duration::from_secs(5), || sink.count() == 1));
    let dump = String::from_utf8(sink.dumps().remove(0)).unwrap();
    assert!(dump.contains(".leading dot\n...three\n"), "{dump}");
}
