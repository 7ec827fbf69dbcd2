//! Connection management end to end, with real sockets from distinct loopback addresses: one
//! client (127.0.0.2) cannot take every slot while another (127.0.0.3) is still served.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use attitude_test_support::{Attitude, Client, Recorder, wait_for};

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const LEGIT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

fn send_one(attitude: &Attitude, from: IpAddr) -> String {
    let (mut c, greeting) = Client::connect_from(attitude.smtp, from);
    assert!(greeting.starts_with("220"), "{greeting}");
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: legit\r\n\r\nstill served\r\n.\r\n");
    let reply = c.reply();
    c.cmd("QUIT");
    reply
}

/// One message of about 1 MiB (1049 lines of 998 octets): the end-of-data reply, and how
/// long the content took from its first line to that reply.
fn upload_mib(attitude: &Attitude) -> (String, Duration) {
    let mut c = Client::connect(attitude.smtp);
    c.start_data("a@example.org", &["b@example.com"]);
    let line = [b'q'; 998];
    let started = Instant::now();
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..1049 {
        c.send(&line);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    (r, started.elapsed())
}

#[test]
fn per_client_limit_refuses_one_client_and_serves_another() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nexempt_networks = []\n\
         [connections.per_client]\nlimit = 3\n[connections.rate]\nper_minute = 0\n\
         [tarpit]\nrefusal_delay = \"1s\"\nrefusal_budget = 1\n",
        &[recorder.addr],
    );
    let mut held = Vec::new();
    for i in 0..3 {
        let (c, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
        assert!(greeting.starts_with("220"), "session {i}: {greeting}");
        held.push(c);
    }
    // Over its limit, the client waits `refusal_delay` for its 421; one refusal may be held at a
    // time (`refusal_budget`), so a second one meanwhile is answered at once.
    let smtp = attitude.smtp;
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        let (mut refused, greeting) = Client::connect_from(smtp, ATTACKER);
        (greeting, started.elapsed(), refused.is_closed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let at_once = Instant::now();
    let (mut refused, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    assert!(refused.is_closed(), "a refusal closes the connection");
    assert!(
        at_once.elapsed() < Duration::from_millis(500),
        "over the refusal budget: at once"
    );
    let (greeting, took, closed) = waiting.join().unwrap();
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    assert!(closed, "a refusal closes the connection");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "held for the refusal delay: {took:?}"
    );
    assert_eq!(
        attitude.metric("attitude_tarpit_held_total{stage=\"refusal\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_tarpit_over_budget_total{stage=\"refusal\"}"),
        Some(1.0)
    );

    // Another client is not affected.
    assert!(send_one(&attitude, LEGIT).starts_with("250"));

    // The permit lives exactly as long as the session.
    held.pop().unwrap().cmd("QUIT");
    assert!(wait_for(Duration::from_secs(5), || {
        let (mut c, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
        let ok = greeting.starts_with("220");
        if ok {
            c.cmd("QUIT");
        }
        ok
    }));
    assert!(
        attitude
            .metric("attitude_limit_rejections_total{layer=\"concurrency\",rule=\"per_client\",key=\"client\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        attitude
            .metric("attitude_sessions_ended_total{result=\"refused\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn global_cap_answers_421_at_once() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nmax_sessions = 2\nexempt_networks = []\n[connections.per_client]\nlimit = 0\n[connections.rate]\nper_minute = 0\n",
        &[recorder.addr],
    );
    let (_a, g1) = Client::connect_from(attitude.smtp, ATTACKER);
    let (_b, g2) = Client::connect_from(attitude.smtp, LEGIT);
    assert!(
        g1.starts_with("220") && g2.starts_with("220"),
        "{g1} / {g2}"
    );
    let started = Instant::now();
    let (mut c, greeting) = Client::connect_from(attitude.smtp, LEGIT);
    assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
    assert!(c.is_closed());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn connection_rate_defers_a_burst_from_one_client_only() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nexempt_networks = []\n[connections.rate]\nper_minute = 6\nburst = 2\n\
         [tarpit]\nrefusal_delay = \"0s\"\n",
        &[recorder.addr],
    );
    for _ in 0..2 {
        let (mut c, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
        assert!(greeting.starts_with("220"), "{greeting}");
        c.cmd("QUIT");
    }
    let (_c, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    assert!(greeting.contains("try again in"), "{greeting}");
    assert!(send_one(&attitude, LEGIT).starts_with("250"));
}

#[test]
fn exempt_networks_and_dry_run() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nexempt_networks = [\"127.0.0.3/32\"]\n\
         [connections.per_client]\nlimit = 1\n[connections.rate]\nper_minute = 0\n\
         [tarpit]\nrefusal_delay = \"0s\"\n",
        &[recorder.addr],
    );
    let (_held, g) = Client::connect_from(attitude.smtp, LEGIT);
    assert!(g.starts_with("220"));
    assert!(
        send_one(&attitude, LEGIT).starts_with("250"),
        "exempt network"
    );
    let (_a, g) = Client::connect_from(attitude.smtp, ATTACKER);
    assert!(g.starts_with("220"));
    let (_b, g) = Client::connect_from(attitude.smtp, ATTACKER);
    assert!(g.starts_with("421"), "{g}");

    let dry = Attitude::start(
        "[connections]\nexempt_networks = []\n\
         [connections.per_client]\nlimit = 1\nmode = \"dry-run\"\n[connections.rate]\nper_minute = 0\n",
        &[recorder.addr],
    );
    let (_a, g) = Client::connect_from(dry.smtp, ATTACKER);
    assert!(g.starts_with("220"));
    assert!(
        send_one(&dry, ATTACKER).starts_with("250"),
        "dry-run lets it through"
    );
    assert_eq!(
        dry.metric("attitude_limit_would_reject_total{layer=\"concurrency\",rule=\"per_client\",key=\"client\"}"),
        Some(1.0)
    );
    // The global cap in dry-run: over it only counted.
    let dry_cap = Attitude::start(
        "[connections]\nmax_sessions = 1\nmax_sessions_mode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let (_a, g) = Client::connect_from(dry_cap.smtp, LEGIT);
    assert!(g.starts_with("220"), "{g}");
    let (_b, g) = Client::connect_from(dry_cap.smtp, LEGIT);
    assert!(g.starts_with("220"), "over the cap, served in dry-run: {g}");
    assert_eq!(
        dry_cap.metric("attitude_limit_would_reject_total{layer=\"concurrency\",rule=\"max_sessions\",key=\"global\"}"),
        Some(1.0)
    );
}

#[test]
fn message_and_recipient_rates_defer_with_450_and_recover() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nexempt_networks = []\n\
         [[rates]]\nname = \"client-messages\"\nkey = \"client\"\ncount = \"messages\"\nlimit = 1\nper = \"2s\"\nburst = 3\n\
         [[rates]]\nname = \"domain-rcpts\"\nkey = \"rcpt-domain\"\ncount = \"recipients\"\nlimit = 2\nper = \"1h\"\n",
        &[recorder.addr],
    );
    let (mut c, greeting) = Client::connect_from(attitude.smtp, ATTACKER);
    assert!(greeting.starts_with("220"));
    assert!(c.cmd("EHLO rate.test").starts_with("250"));
    for i in 0..3 {
        assert!(
            c.cmd("MAIL FROM:<a@example.org>").starts_with("250"),
            "message {i}"
        );
        assert!(
            c.cmd(&format!("RCPT TO:<x@other{i}.example>"))
                .starts_with("250")
        );
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: r\r\n\r\nrate\r\n.\r\n");
        assert!(c.reply().starts_with("250"));
    }
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("450 4.7.1"), "{r}");
    assert!(
        r.contains("client-messages") && r.contains("try again in"),
        "{r}"
    );
    // Another client is not affected.
    let (mut other, _) = Client::connect_from(attitude.smtp, LEGIT);
    assert!(other.cmd("EHLO other.test").starts_with("250"));
    assert!(other.cmd("MAIL FROM:<b@example.org>").starts_with("250"));
    // Recipients per domain: two for target.example, then 450; other domains pass.
    assert!(other.cmd("RCPT TO:<1@target.example>").starts_with("250"));
    assert!(other.cmd("RCPT TO:<2@TARGET.example>").starts_with("250"));
    let r = other.cmd("RCPT TO:<3@target.example>");
    assert!(
        r.starts_with("450 4.7.1") && r.contains("domain-rcpts"),
        "{r}"
    );
    assert!(
        other
            .cmd("RCPT TO:<4@elsewhere.example>")
            .starts_with("250")
    );
    // A later message from the deferred client passes.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(
        attitude
            .metric("attitude_limit_rejections_total{layer=\"rate\",rule=\"client-messages\",key=\"client\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn the_null_sender_and_a_domainless_sender_do_not_escape_sender_rates() {
    let recorder = Recorder::start();
    for key in ["sender", "sender-domain"] {
        let attitude = Attitude::start(
            &format!(
                "[[rates]]\nname = \"by-{key}\"\nkey = \"{key}\"\ncount = \"messages\"\n\
                 limit = 2\nper = \"1h\"\n"
            ),
            &[recorder.addr],
        );
        let mut c = Client::connect(attitude.smtp);
        assert!(c.cmd("EHLO bounces.test").starts_with("250"));
        // `<>` has its own budget (under `<>`), and `<postmaster>` its own (its address, or
        // `<no-domain>` for a domain rule): each passes twice, whatever the spelling.
        for (first, second, third) in [("", "", ""), ("postmaster", "PostMaster", "POSTMASTER")] {
            for sender in [first, second] {
                let r = c.cmd(&format!("MAIL FROM:<{sender}>"));
                assert!(r.starts_with("250"), "{key} <{sender}>: {r}");
                assert!(c.cmd("RSET").starts_with("250"));
            }
            let r = c.cmd(&format!("MAIL FROM:<{third}>"));
            assert!(
                r.starts_with("450 4.7.1") && r.contains(&format!("by-{key}")),
                "{key} <{third}>: {r}"
            );
        }
    }
}

#[test]
fn throttle_from_the_configuration_slows_an_upload_and_refuses_nothing() {
    // The rate itself is pinned on a paused clock (crates/service/tests/session.rs); this is
    // `[throttle]` reaching the stack of a real process, and its metric.
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[throttle]\nsession_bytes_per_second = 524288\nburst_bytes = 65536\n",
        &[recorder.addr],
    );
    let (r, took) = upload_mib(&attitude);
    assert!(r.starts_with("250"), "{r}");
    // 1 MiB at 512 KiB/s after a 64 KiB burst cannot take less than about 1.9 s.
    assert!(took >= Duration::from_millis(1500), "1 MiB took {took:?}");
    assert_eq!(recorder.messages().len(), 1);
    assert!(
        attitude
            .metric("attitude_throttled_bytes_total")
            .unwrap_or(0.0)
            > 500_000.0
    );
}

#[test]
fn tarpit_delays_replies_after_errors_and_the_budget_holds() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[tarpit]\nsoft_error_limit = 2\ndelay_per_error = \"300ms\"\nmax_delay = \"2s\"\nbudget = 5\n",
        &[recorder.addr],
    );
    let mut c = Client::connect(attitude.smtp);
    let timed = |c: &mut Client, line: &str| {
        let started = Instant::now();
        let reply = c.cmd(line);
        (reply, started.elapsed())
    };
    let (r, t) = timed(&mut c, "FOO");
    assert!(
        r.starts_with("500") && t < Duration::from_millis(250),
        "{r} {t:?}"
    );
    let (_, t) = timed(&mut c, "BAR");
    assert!(t < Duration::from_millis(250), "{t:?}");
    // Two errors: from now on replies wait, longer with each error.
    let (r, t) = timed(&mut c, "NOOP");
    assert!(
        r.starts_with("250") && t >= Duration::from_millis(300),
        "{r} {t:?}"
    );
    let (_, t) = timed(&mut c, "BAZ");
    assert!(t >= Duration::from_millis(300), "{t:?}");
    let (r, t) = timed(&mut c, "NOOP");
    assert!(
        r.starts_with("250") && t >= Duration::from_millis(600),
        "{r} {t:?}"
    );
    assert!(
        attitude
            .metric("attitude_tarpit_held_total{stage=\"command\"}")
            .unwrap_or(0.0)
            >= 3.0
    );

    // Budget: one session may be held at once; the next one is closed with 421 instead.
    let tight = Attitude::start(
        "[tarpit]\nsoft_error_limit = 1\ndelay_per_error = \"2s\"\nbudget = 1\n",
        &[recorder.addr],
    );
    let mut a = Client::connect(tight.smtp);
    let mut b = Client::connect(tight.smtp);
    assert!(a.cmd("FOO").starts_with("500"));
    assert!(b.cmd("FOO").starts_with("500"));
    let started = Instant::now();
    a.send(b"NOOP\r\n"); // held for 2 s
    std::thread::sleep(Duration::from_millis(300));
    let r = b.cmd("NOOP");
    assert!(r.starts_with("421 4.7.0"), "over budget: {r}");
    assert!(b.is_closed());
    let r = a.reply();
    assert!(
        r.starts_with("250") && started.elapsed() >= Duration::from_secs(2),
        "{r}"
    );
    assert_eq!(
        tight.metric("attitude_tarpit_over_budget_total{stage=\"command\"}"),
        Some(1.0)
    );
}

#[test]
fn tarpit_slows_a_client_marked_suspicious() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [tarpit]\nsuspicious_delay = \"700ms\"\n",
        &[recorder.addr],
    );
    let (mut c, _) = Client::connect_from(attitude.smtp, ATTACKER);
    let timed = |c: &mut Client, line: &str| {
        let started = Instant::now();
        let reply = c.cmd(line);
        (reply, started.elapsed())
    };
    assert!(c.cmd("EHLO probe.test").starts_with("250"));
    let (r, t) = timed(&mut c, "MAIL FROM:<a@example.org>");
    assert!(
        r.starts_with("250") && t < Duration::from_millis(500),
        "{r} {t:?}"
    );
    // Trying to relay marks the client suspicious: every later reply waits.
    let (r, t) = timed(&mut c, "RCPT TO:<victim@elsewhere.org>");
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(t < Duration::from_millis(500), "{t:?}");
    for line in ["RCPT TO:<x@example.com>", "RSET", "NOOP"] {
        let (r, t) = timed(&mut c, line);
        assert!(r.starts_with("250"), "{line}: {r}");
        assert!(t >= Duration::from_millis(700), "{line}: {t:?}");
    }
    // Another client is not slowed.
    let (mut other, _) = Client::connect_from(attitude.smtp, LEGIT);
    let (r, t) = timed(&mut other, "NOOP");
    assert!(
        r.starts_with("250") && t < Duration::from_millis(500),
        "{r} {t:?}"
    );
    assert_eq!(
        attitude.metric("attitude_tarpit_held_total{stage=\"command\"}"),
        Some(3.0)
    );
}

#[test]
fn rate_buckets_are_the_processs_by_rule_name_across_listeners_and_reloads() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[[rates]]\nname = \"sender-hourly\"\nkey = \"sender\"\ncount = \"messages\"\n\
         limit = 3\nper = \"1h\"\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [limits]\nmax_recipients = 50\n",
        &[recorder.addr],
    );
    let mail = |addr| {
        let mut c = Client::connect(addr);
        assert!(c.cmd("EHLO rates.test").starts_with("250"));
        let r = c.cmd("MAIL FROM:<a@example.org>");
        c.cmd("QUIT");
        r
    };
    let (mx, submission) = (attitude.smtp, attitude.listener("submission"));
    // Both listeners name the rule: one bucket of 3.
    assert!(mail(mx).starts_with("250"));
    assert!(mail(submission).starts_with("250"));
    // A reload (another value elsewhere) builds new stacks over the same buckets.
    attitude.reload("max_recipients = 50", "max_recipients = 60");
    assert!(mail(mx).starts_with("250"));
    let r = mail(submission);
    assert!(
        r.starts_with("450 4.7.1") && r.contains("sender-hourly"),
        "the fourth message of the hour, after a reload, on the other listener: {r}"
    );
}

#[test]
fn session_counts_are_the_processs_across_listeners_and_reloads() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nexempt_networks = []\n[connections.per_client]\nlimit = 1\n\
         [tarpit]\nrefusal_delay = \"0s\"\n[limits]\nmax_recipients = 50\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n",
        &[recorder.addr],
    );
    let client: IpAddr = "127.0.0.2".parse().unwrap();
    let (mut held, greeting) = Client::connect_from(attitude.smtp, client);
    assert!(greeting.starts_with("220"), "{greeting}");
    // The same client on the other listener: its one session is taken.
    let submission = attitude.listener("submission");
    let (_c, refused) = Client::connect_from(submission, client);
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    // A reload builds new stacks; the session held under the old one still counts.
    attitude.reload("max_recipients = 50", "max_recipients = 60");
    let (_c, refused) = Client::connect_from(attitude.smtp, client);
    assert!(
        refused.starts_with("421 4.7.0"),
        "after the reload: {refused}"
    );
    // Once it ends, the client is served again, on either listener.
    held.cmd("QUIT");
    assert!(wait_for(Duration::from_secs(5), || {
        let (mut c, greeting) = Client::connect_from(submission, client);
        let ok = greeting.starts_with("220");
        if ok {
            c.cmd("QUIT");
        }
        ok
    }));
}

#[test]
fn a_reload_that_lowers_a_rate_applies_it_to_what_was_used() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[[rates]]\nname = \"sender-hourly\"\nkey = \"sender\"\ncount = \"messages\"\n\
         limit = 4\nper = \"1h\"\n",
        &[recorder.addr],
    );
    let mail = || {
        let mut c = Client::connect(attitude.smtp);
        assert!(c.cmd("EHLO rates.test").starts_with("250"));
        let r = c.cmd("MAIL FROM:<a@example.org>");
        c.cmd("QUIT");
        r
    };
    assert!(mail().starts_with("250"));
    assert!(mail().starts_with("250"));
    // Two of four an hour used, half an hour's worth; the limit becomes two an hour: that
    // half hour is one of the two, so one more passes (fresh buckets would allow two).
    attitude.reload("limit = 4", "limit = 2");
    assert!(mail().starts_with("250"));
    let r = mail();
    assert!(
        r.starts_with("450 4.7.1"),
        "the new limit on the old count: {r}"
    );
}

#[test]
fn a_dry_run_tarpit_holds_nothing_and_counts_what_it_would_have() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[tarpit]\nsoft_error_limit = 1\ndelay_per_error = \"2s\"\nmode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO dry.test").starts_with("250"));
    let started = Instant::now();
    for _ in 0..3 {
        assert!(c.cmd("BOGUS").starts_with("500"));
    }
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "held in a dry run: {:?}",
        started.elapsed()
    );
    assert!(
        attitude
            .metric("attitude_tarpit_would_hold_total{stage=\"command\"}")
            .is_some_and(|n| n >= 2.0)
    );
}

#[test]
fn a_dry_run_throttle_slows_nothing_and_counts_what_it_would_have() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[throttle]\nsession_bytes_per_second = 65536\nburst_bytes = 65536\nmode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let (r, took) = upload_mib(&attitude);
    assert!(r.starts_with("250"), "{r}");
    // Enforced, 1 MiB at 64 KiB/s would take about 15 s.
    assert!(
        took < Duration::from_secs(5),
        "1 MiB took {took:?} in a dry run"
    );
    assert!(
        attitude
            .metric("attitude_throttle_would_delay_bytes_total")
            .unwrap_or(0.0)
            > 500_000.0
    );
}
