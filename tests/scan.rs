//! The scanners end to end: Debian's clamd and rspamd, started by the tests on loopback and run
//! offline, attitude in front of a recording backend. A refused message never reaches the
//! backend; a clean one arrives byte-exact (with the headers rspamd asked for); an engine that is
//! away takes its configured choice, counted.
//!
//! rspamd takes about 20 s to start, so its cases share one instance, in one test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use attitude_test_support::{
    Attitude, Clamd, Client, EICAR, GTUBE, Recorder, Rspamd, SOFT_SENDER, scratch_dir,
};
use base64::Engine;

const BASE: &str = "[relay]\nlocal_domains = [\"example.com\"]\n\
                    [content]\nblock_attachments = false\n";

fn clamav(clamd: &Clamd, extra: &str) -> String {
    format!(
        "{BASE}[clamav]\nenabled = true\naddress = [\"{}\"]\ntimeout = \"5s\"\n{extra}",
        clamd.addr
    )
}

/// A message with `attachment` as a base64 part named `name`.
fn with_attachment(name: &str, attachment: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(attachment);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: the file\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain\r\n\r\nHere it is.\r\n--b1\r\n\
         Content-Type: application/octet-stream; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

/// A zip archive holding `data` as `name` (made by Python's zipfile: no archive crate here).
fn zipped(name: &str, data: &[u8]) -> Vec<u8> {
    let dir = scratch_dir("zip");
    let (input, output) = (dir.join("in"), dir.join("out.zip"));
    std::fs::write(&input, data).unwrap();
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile\nwith zipfile.ZipFile(sys.argv[3], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[1], sys.argv[2])")
        .arg(&input)
        .arg(name)
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(output).unwrap()
}

fn clean_message() -> Vec<u8> {
    b"From: Alice <a@example.org>\r\nTo: Bob <b@example.com>\r\nSubject: lunch\r\n\
      Message-ID: <lunch.1@example.org>\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\n\
      Shall we meet at noon?\r\n..a line that starts with a dot\r\n"
        .to_vec()
}

/// Sends `content` (already dot-stuffed, CRLF lines) from `from`; the reply to the final dot and
/// how long it took.
fn send_from(addr: SocketAddr, from: &str, content: &[u8]) -> (String, Duration) {
    let mut c = Client::connect(addr);
    c.start_data(from, &["b@example.com"]);
    c.send(content);
    let started = Instant::now();
    c.send(b".\r\n");
    let reply = c.reply();
    let took = started.elapsed();
    c.cmd("QUIT");
    (reply, took)
}

/// Sends `content` (not stuffed) in two BDAT chunks; the reply to the last.
fn send_bdat(addr: SocketAddr, content: &[u8]) -> String {
    let mut c = Client::connect(addr);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    let (first, last) = content.split_at(content.len() / 2);
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes());
    c.send(first);
    assert!(c.reply().starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n", last.len()).as_bytes());
    c.send(last);
    let reply = c.reply();
    c.cmd("QUIT");
    reply
}

fn send(addr: SocketAddr, content: &[u8]) -> String {
    send_from(addr, "a@example.org", content).0
}

/// What the backend gets for a message sent as `content`: the dot-stuffing undone.
fn unstuffed(content: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(content)
        .replace("\r\n..", "\r\n.")
        .into_bytes()
}

#[test]
fn clamav_refuses_eicar_plain_and_zipped_and_delivers_a_clean_message_byte_exact() {
    let clamd = Clamd::start(10 * 1024 * 1024);
    let backend = Recorder::start();
    let attitude = Attitude::start(&clamav(&clamd, ""), &[backend.addr]);

    for message in [
        with_attachment("notes.txt", EICAR),
        with_attachment("archive.zip", &zipped("readme.txt", EICAR)),
    ] {
        let reply = send(attitude.smtp, &message);
        assert!(
            reply.starts_with("554 5.7.1") && reply.contains("eicar.com.UNOFFICIAL"),
            "{reply}"
        );
    }
    assert!(
        backend.messages().is_empty(),
        "a message with a virus reached the backend"
    );

    let clean = clean_message();
    assert!(send(attitude.smtp, &clean).starts_with("250"));
    let harmless_zip = with_attachment("photos.zip", &zipped("photo.txt", b"not a virus"));
    assert!(send(attitude.smtp, &harmless_zip).starts_with("250"));
    let messages = backend.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].content,
        unstuffed(&clean),
        "delivered byte-exact"
    );
    assert_eq!(messages[1].content, harmless_zip);
    assert_eq!(
        attitude.metric("attitude_scans_total{engine=\"clamav\",result=\"virus\"}"),
        Some(2.0)
    );
    assert_eq!(
        attitude.metric("attitude_scans_total{engine=\"clamav\",result=\"clean\"}"),
        Some(2.0)
    );
    assert!(
        attitude
            .metric("attitude_scan_bytes_total{engine=\"clamav\"}")
            .unwrap()
            > 1000.0
    );
}

#[test]
fn clamav_away_tempfails_by_default_accepts_with_on_error_accept_and_the_next_daemon_is_tried() {
    let mut clamd = Clamd::start(10 * 1024 * 1024);
    let backend = Recorder::start();
    let closed = Attitude::start(&clamav(&clamd, ""), &[backend.addr]);
    let open = Attitude::start(&clamav(&clamd, "on_error = \"accept\"\n"), &[backend.addr]);
    clamd.stop();

    let reply = send(closed.smtp, &clean_message());
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(backend.messages().is_empty());
    assert_eq!(
        closed.metric("attitude_scans_total{engine=\"clamav\",result=\"error_connect\"}"),
        Some(1.0)
    );
    assert!(send(open.smtp, &clean_message()).starts_with("250"));
    assert_eq!(backend.messages().len(), 1);
    assert_eq!(
        open.metric("attitude_scans_total{engine=\"clamav\",result=\"error_connect\"}"),
        Some(1.0)
    );

    // Back again: scanned again.
    clamd.restart();
    let reply = send(closed.smtp, &with_attachment("notes.txt", EICAR));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");

    // Several daemons are tried in turn: one that is not there, then clamd's unix socket.
    let dead = format!("127.0.0.1:{}", attitude_test_support::free_port());
    let in_turn = Attitude::start(
        &format!(
            "{BASE}[clamav]\nenabled = true\naddress = [\"{dead}\", \"{}\"]\n",
            clamd.socket.display()
        ),
        &[backend.addr],
    );
    let reply = send(in_turn.smtp, &with_attachment("notes.txt", EICAR));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(send(in_turn.smtp, &clean_message()).starts_with("250"));
}

#[test]
fn a_message_over_the_scanners_limit_takes_the_configured_choice() {
    // clamd refuses streams over 64 KiB; attitude's own limit is higher.
    let clamd = Clamd::start(64 * 1024);
    let backend = Recorder::start();
    let skip = Attitude::start(&clamav(&clamd, ""), &[backend.addr]);
    let tempfail = Attitude::start(
        &clamav(&clamd, "on_oversize = \"tempfail\"\n"),
        &[backend.addr],
    );
    let big = with_attachment("big.txt", &vec![b'x'; 200 * 1024]);

    let reply = send(tempfail.smtp, &big);
    assert!(reply.starts_with("451 4.3.4"), "{reply}");
    assert!(backend.messages().is_empty());
    assert!(send(skip.smtp, &big).starts_with("250"));
    assert_eq!(backend.messages().len(), 1);
    for attitude in [&skip, &tempfail] {
        assert_eq!(
            attitude.metric("attitude_scans_total{engine=\"clamav\",result=\"oversize\"}"),
            Some(1.0)
        );
    }

    // attitude's own max_size: the message is not sent to clamd at all.
    let own = Attitude::start(
        &clamav(&clamd, "max_size = 10000\non_oversize = \"tempfail\"\n"),
        &[backend.addr],
    );
    let reply = send(own.smtp, &big);
    assert!(reply.starts_with("451 4.3.4"), "{reply}");
    assert!(
        own.metric("attitude_scan_bytes_total{engine=\"clamav\"}")
            .unwrap()
            <= 10000.0
    );
}

/// The header field `name` of a message, if it has one.
fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    head.split("\r\n")
        .find(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .map(|l| l.split_once(':').unwrap().1.trim())
}

#[test]
fn rspamd_verdicts_headers_dry_run_both_engines_and_rspamd_away() {
    let mut rspamd = Rspamd::start();
    let clamd = Clamd::start(10 * 1024 * 1024);
    let backend = Recorder::start();
    // mx: both engines, rspamd may change headers; other: rspamd off, ClamAV on.
    let config = format!(
        "{}[rspamd]\nenabled = true\nurl = \"http://{}\"\nsettings_id = \"inbound\"\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\n\
         policy.rspamd = {{ enabled = false }}\n",
        clamav(&clamd, ""),
        rspamd.addr
    );
    let attitude = Attitude::start(&config, &[backend.addr]);
    let (mx, other) = (attitude.listener("mx"), attitude.listener("other"));
    let gtube =
        format!("From: a@example.org\r\nTo: b@example.com\r\nSubject: test\r\n\r\n{GTUBE}\r\n")
            .into_bytes();

    // GTUBE: refused with rspamd's own message; nothing reaches the backend.
    let reply = send(mx, &gtube);
    assert_eq!(reply, "554 5.7.1 Gtube pattern");
    assert!(backend.messages().is_empty());

    // A clean message: delivered, rspamd's headers on top of it, the rest byte-exact.
    let clean = clean_message();
    assert!(send(mx, &clean).starts_with("250"));
    let delivered = backend.messages().pop().unwrap();
    let text = String::from_utf8(delivered.content.clone()).unwrap();
    assert!(
        field(&text, "X-Spamd-Result").is_some_and(|v| v.starts_with("default: False")),
        "{text}"
    );
    assert!(
        field(&text, "X-Spam-Status").is_some_and(|v| v.starts_with("No")),
        "{text}"
    );
    let original = String::from_utf8(unstuffed(&clean)).unwrap();
    assert!(
        text.ends_with(&original),
        "the message itself is untouched:\n{text}"
    );

    // The same over BDAT (held, then passed on as the backend takes it).
    assert_eq!(send_bdat(mx, &gtube), "554 5.7.1 Gtube pattern");
    let plain = unstuffed(&clean);
    assert!(send_bdat(mx, &plain).starts_with("250"));
    let delivered = String::from_utf8(backend.messages().pop().unwrap().content).unwrap();
    assert!(field(&delivered, "X-Spamd-Result").is_some(), "{delivered}");
    assert!(delivered.ends_with(&original), "{delivered}");
    assert_eq!(backend.messages().len(), 2);

    // A soft-reject rule (a multimap on the test sender): 451 with rspamd's message.
    let (reply, _) = send_from(mx, SOFT_SENDER, &clean);
    assert_eq!(reply, "451 4.7.1 Try again later, test sender");

    // Both engines on one message: one verdict, the strictest (ClamAV's 554 over rspamd's 451).
    let (reply, _) = send_from(mx, SOFT_SENDER, &with_attachment("notes.txt", EICAR));
    assert!(reply.starts_with("554 5.7.1 Virus found"), "{reply}");

    // The other listener: no rspamd there (GTUBE delivered), ClamAV still on.
    assert!(send(other, &gtube).starts_with("250"));
    assert!(send(other, &with_attachment("notes.txt", EICAR)).starts_with("554"));
    assert_eq!(backend.messages().len(), 3);

    // Both engines run at once (crates/policy/tests/scan.rs shows it with slowed engines):
    // the time from the final dot to the reply over 20 clean messages, against the engines'
    // own times (attitude's histograms), for the record.
    let sum = |engine: &str| {
        attitude
            .metric(&format!("attitude_scan_seconds_sum{{engine=\"{engine}\"}}"))
            .unwrap()
    };
    let (clam0, rspamd0) = (sum("clamav"), sum("rspamd"));
    let mut total = Duration::ZERO;
    for _ in 0..20 {
        let (reply, took) = send_from(mx, "a@example.org", &clean);
        assert!(reply.starts_with("250"), "{reply}");
        total += took;
    }
    let (clam, rspamd_s) = (sum("clamav") - clam0, sum("rspamd") - rspamd0);
    eprintln!(
        "both engines: {:.1} ms per message from the final dot to the reply; clamav {:.1} ms, \
         rspamd {:.1} ms",
        total.as_secs_f64() * 50.0,
        clam * 50.0,
        rspamd_s * 50.0
    );
    assert!(total.as_secs_f64() >= clam.max(rspamd_s));

    // Dry-run: GTUBE delivered, the would-be verdict counted.
    let dry = Attitude::start(
        &format!(
            "{BASE}[rspamd]\nenabled = true\nurl = \"http://{}\"\nmode = \"dry-run\"\n",
            rspamd.addr
        ),
        &[backend.addr],
    );
    let count = backend.messages().len();
    assert!(send(dry.smtp, &gtube).starts_with("250"));
    assert_eq!(backend.messages().len(), count + 1);
    assert_eq!(
        dry.metric("attitude_policy_decisions_total{policy=\"rspamd\",action=\"would_reject\"}"),
        Some(1.0)
    );

    // rspamd away: delivered (fail open), counted.
    rspamd.stop();
    assert!(send(mx, &gtube).starts_with("250"));
    assert_eq!(backend.messages().len(), count + 2);
    assert_eq!(
        attitude.metric("attitude_scans_total{engine=\"rspamd\",result=\"error_connect\"}"),
        Some(1.0)
    );
}
