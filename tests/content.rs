//! Content policies end to end: Python's smtplib sends real MIME samples (`tests/samples/`)
//! through attitude to a recording aiosmtpd backend. A refused message is aborted at the backend,
//! never committed; an allowed one arrives intact; dry-run lets it through and counts it.

use std::path::{Path, PathBuf};

use attitude_test_support::{Attitude, Recorder, smtplib};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

fn send(attitude: &Attitude, file: &Path) -> (bool, String) {
    smtplib(
        "send",
        attitude.smtp,
        "sender@example.org",
        "rcpt@example.com",
        file,
    )
}

#[test]
fn dangerous_attachments_are_refused_and_never_reach_the_backend() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    for (file, shown) in [
        ("plain-exe.eml", "setup.exe"),
        ("double-extension.eml", "invoice.pdf.exe"),
        ("encoded-rfc2231.eml", "r?sum? final.SCR"),
        ("encoded-rfc2047.eml", "?berweisung.pdf.js"),
        ("nested-rfc822.eml", "pictures.scr"),
    ] {
        let (accepted, out) = send(&attitude, &sample(file));
        assert!(!accepted, "{file} was accepted:\n{out}");
        assert!(
            out.contains("554") && out.contains("5.7.1") && out.contains(shown),
            "{file}: the refusal names the attachment:\n{out}"
        );
    }
    assert!(
        recorder.messages().is_empty(),
        "a refused message reached the backend"
    );

    let (accepted, out) = send(&attitude, &sample("harmless-pdf.eml"));
    assert!(accepted, "{out}");
    let messages = recorder.messages();
    assert_eq!(messages.len(), 1);
    let original = std::fs::read(sample("harmless-pdf.eml")).unwrap();
    assert_eq!(
        messages[0].content, original,
        "the allowed message arrives intact"
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"attachment\",action=\"reject\"}"),
        Some(5.0)
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"attachment\",action=\"allow\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_content_buffered_bytes"),
        Some(0.0)
    );
}

#[test]
fn header_checks_reject_and_defer() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[content]\nblock_attachments = false\n\
         [[content.header_checks]]\npattern = '^Subject:.*holiday pictures'\ntext = \"No holiday pictures\"\n\
         [[content.header_checks]]\npattern = '^Subject: rfc 2231'\naction = \"defer\"\n",
        &[recorder.addr],
    );
    let (accepted, out) = send(&attitude, &sample("nested-rfc822.eml"));
    assert!(
        !accepted && out.contains("554") && out.contains("No holiday pictures"),
        "{out}"
    );
    let (accepted, out) = send(&attitude, &sample("encoded-rfc2231.eml"));
    assert!(
        !accepted && out.contains("451") && out.contains("4.7.1"),
        "{out}"
    );
    // Attachment blocking is off here: the .exe passes, header checks find nothing.
    let (accepted, out) = send(&attitude, &sample("plain-exe.eml"));
    assert!(accepted, "{out}");
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"header\",action=\"reject\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"header\",action=\"defer\"}"),
        Some(1.0)
    );
}

#[test]
fn dry_run_lets_it_through_and_counts_it() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[content]\nmode = \"dry-run\"\n", &[recorder.addr]);
    let (accepted, out) = send(&attitude, &sample("double-extension.eml"));
    assert!(accepted, "{out}");
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric(
            "attitude_policy_decisions_total{policy=\"attachment\",action=\"would_reject\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn over_the_buffer_budget_messages_are_deferred_not_let_through() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[content]\nbuffer_budget = 256\n", &[recorder.addr]);
    let (accepted, out) = send(&attitude, &sample("harmless-pdf.eml"));
    assert!(
        !accepted && out.contains("451") && out.contains("4.3.1"),
        "{out}"
    );
    assert!(recorder.messages().is_empty());
    assert_eq!(
        attitude.metric("attitude_content_over_budget_total"),
        Some(1.0)
    );
}

#[test]
fn recipient_and_size_limits() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[limits]\nmax_recipients = 2\nmax_message_size = 2000\n",
        &[recorder.addr],
    );
    let mut c = attitude_test_support::Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO limits.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<1@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<2@example.com>").starts_with("250"));
    let r = c.cmd("RCPT TO:<3@example.com>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..40 {
        c.send(&[b'x'; 98]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(
        recorder.messages().is_empty(),
        "an oversized message is never committed"
    );
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=5000");
    assert!(r.starts_with("552"), "{r}");
}
