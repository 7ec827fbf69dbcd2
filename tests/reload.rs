//! Hot reload: a changed configuration file (or SIGHUP) applies to new sessions while running
//! sessions keep the configuration they started with; a broken file is refused and the running
//! configuration stays; what needs a restart is said so.

use std::time::Duration;

use attitude_test_support::{Attitude, Client, Recorder, free_port, wait_for};

/// Rewrites the configuration file the way a deployment tool does (new file, then rename).
fn rewrite(attitude: &Attitude, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&attitude.config_path).unwrap();
    let tmp = attitude.config_path.with_extension("new");
    std::fs::write(&tmp, edit(text)).unwrap();
    std::fs::rename(&tmp, &attitude.config_path).unwrap();
}

fn reloads(attitude: &Attitude, result: &str) -> f64 {
    attitude
        .metric(&format!(
            "attitude_config_reload_total{{result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

/// A session's recipients until one is refused: the replies.
fn rcpts(c: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| c.cmd(&format!("RCPT TO:<r{i}@example.com>")))
        .collect()
}

#[test]
fn a_changed_limit_applies_to_new_sessions_and_running_ones_keep_theirs() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[limits]\nmax_recipients = 2\n", &[recorder.addr]);
    let mut running = Client::connect(attitude.smtp);
    running.cmd("EHLO running.test");
    assert!(running.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(
        running
            .cmd("RCPT TO:<first@example.com>")
            .starts_with("250")
    );

    // The file watch picks the change up; no signal needed.
    rewrite(&attitude, |t| {
        t.replace("max_recipients = 2", "max_recipients = 1")
    });
    assert!(
        wait_for(Duration::from_secs(10), || reloads(&attitude, "ok") == 1.0),
        "reloaded"
    );
    let mut fresh = Client::connect(attitude.smtp);
    fresh.cmd("EHLO fresh.test");
    assert!(fresh.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = rcpts(&mut fresh, 2);
    assert!(r[0].starts_with("250") && r[1].starts_with("452"), "{r:?}");

    // The running session still has its limit of 2, and finishes.
    assert!(
        running
            .cmd("RCPT TO:<second@example.com>")
            .starts_with("250")
    );
    assert!(running.cmd("DATA").starts_with("354"));
    running.send(b"Subject: across a reload\r\n\r\nhello\r\n.\r\n");
    let r = running.reply();
    assert!(r.starts_with("250"), "{r}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].rcpt_tos.len(), 2);
    assert!(
        attitude
            .peer
            .stderr()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
    );
    assert!(
        attitude
            .metric("attitude_config_last_reload_success_timestamp_seconds")
            .is_some_and(|t| t > 1.7e9)
    );
}

#[test]
fn a_broken_configuration_is_refused_and_the_running_one_stays() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[limits]\nmax_recipients = 1\n", &[recorder.addr]);
    let good = std::fs::read_to_string(&attitude.config_path).unwrap();

    // A value of the wrong type (SIGHUP too), then one that parses but does not validate.
    rewrite(&attitude, |t| {
        t.replace("max_recipients = 1", "max_recipients = \"many\"")
    });
    attitude.peer.signal("HUP");
    assert!(wait_for(Duration::from_secs(10), || reloads(
        &attitude, "error"
    ) >= 1.0));
    let log = || attitude.peer.stderr().join("\n");
    assert!(
        wait_for(Duration::from_secs(5), || log().contains("reload refused")
            && log().contains("attitude.toml:")
            && log().contains("invalid type")),
        "the log names the file, the line and the problem: {}",
        log()
    );
    rewrite(&attitude, |_| {
        good.replace("max_recipients = 1", "max_recipients = 0")
    });
    assert!(
        wait_for(Duration::from_secs(10), || log()
            .contains("max_recipients must be at least 1")),
        "the log says what is wrong: {}",
        log()
    );
    assert_eq!(
        attitude.metric("attitude_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(reloads(&attitude, "ok"), 0.0);

    // Still serving, with the old limit.
    assert_eq!(attitude.http_get("/readyz").0, 200);
    let mut c = Client::connect(attitude.smtp);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = rcpts(&mut c, 2);
    assert!(r[0].starts_with("250") && r[1].starts_with("452"), "{r:?}");

    // Fixed: applied.
    rewrite(&attitude, |_| {
        good.replace("max_recipients = 1", "max_recipients = 3")
    });
    assert!(wait_for(Duration::from_secs(10), || reloads(
        &attitude, "ok"
    ) == 1.0));
    let mut c = Client::connect(attitude.smtp);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = rcpts(&mut c, 3);
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
}

#[test]
fn a_changed_listen_address_needs_a_restart_and_says_so() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let port = free_port();
    rewrite(&attitude, |t| {
        t.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ) + "\n[limits]\nmax_recipients = 5\n"
    });
    assert!(wait_for(Duration::from_secs(10), || reloads(
        &attitude, "ok"
    ) == 1.0));
    let log = attitude.peer.stderr().join("\n");
    assert!(log.contains("need a restart"), "{log}");
    assert!(log.contains("[listen]"), "{log}");
    // The old address still serves.
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
}

#[test]
fn a_policy_turned_on_by_a_reload_gets_what_it_needs() {
    // Greylisting was off at start, so there was no greylist store: the reload creates it.
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n",
        &[recorder.addr],
    );
    let mut c = Client::connect(attitude.smtp);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    rewrite(&attitude, |t| t + "\n[greylist]\nenabled = true\n");
    assert!(wait_for(Duration::from_secs(10), || reloads(
        &attitude, "ok"
    ) == 1.0));
    let mut fresh = Client::connect(attitude.smtp);
    fresh.cmd("EHLO client.test");
    assert!(fresh.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = fresh.cmd("RCPT TO:<b@example.com>");
    assert!(
        r.starts_with("451 4.7.1"),
        "greylisted after the reload: {r}"
    );
}
