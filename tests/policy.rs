//! Policies end to end: relay control (never an open relay).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use attitude_test_support::{Attitude, Client, Recorder, smtplib};

const OUTSIDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

#[test]
fn relay_only_for_local_domains_or_trusted_clients() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\", \".example.net\"]\ntrusted_networks = [\"127.0.0.3/32\"]\n\
         [tarpit]\nsuspicious_delay = \"0s\"\n",
        &[recorder.addr],
    );
    let (mut c, greeting) = Client::connect_from(attitude.smtp, OUTSIDER);
    assert!(greeting.starts_with("220"));
    assert!(c.cmd("EHLO outsider.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@elsewhere.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@EXAMPLE.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<c@mx.example.net>").starts_with("250"));
    for foreign in ["x@elsewhere.org", "y@example.net", "z@example.com.evil.org"] {
        let r = c.cmd(&format!("RCPT TO:<{foreign}>"));
        assert!(
            r.starts_with("554 5.7.1") && r.contains("Relay access denied"),
            "{foreign}: {r}"
        );
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: local\r\n\r\nonly local recipients\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].rcpt_tos, ["b@EXAMPLE.com", "c@mx.example.net"]);

    // A trusted network relays anywhere.
    let (mut t, _) = Client::connect_from(attitude.smtp, TRUSTED);
    assert!(t.cmd("EHLO trusted.test").starts_with("250"));
    assert!(t.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<x@elsewhere.org>").starts_with("250"));
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"relay\",action=\"reject\"}"),
        Some(3.0)
    );
}

#[test]
fn relay_control_dry_run_counts_and_lets_through() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\nmode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
    c.start_data("a@example.org", &["x@elsewhere.org"]);
    c.send(b"Subject: dry\r\n\r\ndry run\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"relay\",action=\"would_reject\"}"),
        Some(1.0)
    );
}

#[test]
fn default_is_not_an_open_relay() {
    let recorder = Recorder::start();
    // Defaults: no local domain, only loopback trusted. A client outside loopback is simulated by
    // trusting nothing.
    let attitude = Attitude::start("[relay]\ntrusted_networks = []\n", &[recorder.addr]);
    let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
    assert!(c.cmd("EHLO outsider.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@example.com>").starts_with("554 5.7.1"));
    // <postmaster> is never refused by relay control (the backend answers for it).
    let r = c.cmd("RCPT TO:<postmaster>");
    assert!(!r.contains("Relay access denied"), "{r}");
}

#[test]
fn access_lists_first_match_decides() {
    let recorder = Recorder::start();
    let dir = attitude_test_support::scratch_dir("access");
    let deny_file = dir.join("clients.deny");
    std::fs::write(&deny_file, "# worms\n127.0.0.2   # the attacker\n").unwrap();
    let attitude = Attitude::start(
        &format!(
            "[relay]\nlocal_domains = [\"example.com\"]\n\
             [[access.rules]]\ncheck = \"sender\"\nvalues = [\"boss@partner.example\"]\naction = \"allow\"\n\
             [[access.rules]]\ncheck = \"client\"\nfile = {deny_file:?}\naction = \"deny\"\ntext = \"Your network is blocked\"\n\
             [[access.rules]]\ncheck = \"sender\"\nvalues = [\"spam.example\", \".bulk.example\"]\naction = \"deny\"\n\
             [[access.rules]]\ncheck = \"recipient\"\nvalues = [\"/^former-employee@/\"]\naction = \"deny\"\ntext = \"No such user here\"\n\
             [[access.rules]]\ncheck = \"helo\"\nvalues = [\"/^[0-9.]+$/\"]\naction = \"deny\"\n"
        ),
        &[recorder.addr],
    );
    // A denied client is refused at MAIL FROM, with the rule's text; a real client (smtplib).
    let file = dir.join("m.eml");
    std::fs::write(&file, "Subject: access\r\n\r\nhello\r\n").unwrap();
    let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
    assert!(c.cmd("EHLO outsider.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<a@elsewhere.org>");
    assert!(r.starts_with("554 5.7.1 Your network is blocked"), "{r}");
    // ... unless an earlier rule allows the sender.
    let r = c.cmd("MAIL FROM:<boss@partner.example>");
    assert!(r.starts_with("250"), "first match decides: {r}");
    c.cmd("QUIT");

    let (accepted, out) = smtplib(
        "send",
        attitude.smtp,
        "x@spam.example",
        "a@example.com",
        &file,
    );
    assert!(!accepted && out.contains("554"), "sender domain: {out}");
    let (accepted, out) = smtplib(
        "send",
        attitude.smtp,
        "x@a.bulk.example",
        "a@example.com",
        &file,
    );
    assert!(!accepted && out.contains("554"), "sender subdomain: {out}");
    let (accepted, out) = smtplib(
        "send",
        attitude.smtp,
        "x@fine.example",
        "former-employee@example.com",
        &file,
    );
    assert!(
        !accepted && out.contains("No such user here"),
        "recipient: {out}"
    );

    let (mut h, _) = Client::connect_from(attitude.smtp, TRUSTED);
    assert!(h.cmd("HELO 192.0.2.1").starts_with("250"));
    assert!(h.cmd("MAIL FROM:<x@fine.example>").starts_with("554 5.7.1"));
    h.cmd("QUIT");

    assert!(
        recorder.messages().is_empty(),
        "nothing refused reached the backend"
    );
    let (accepted, out) = smtplib(
        "send",
        attitude.smtp,
        "x@fine.example",
        "a@example.com",
        &file,
    );
    assert!(accepted, "{out}");
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"access\",action=\"reject\"}"),
        Some(5.0)
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"access\",action=\"allow\"}"),
        Some(1.0)
    );
}

#[test]
fn access_dry_run_counts_and_lets_through() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[access]\nmode = \"dry-run\"\n\
         [[access.rules]]\ncheck = \"sender\"\nvalues = [\"spam.example\"]\naction = \"deny\"\n",
        &[recorder.addr],
    );
    let (mut c, _) = Client::connect_from(attitude.smtp, TRUSTED);
    c.start_data("x@spam.example", &["a@example.com"]);
    c.send(b"Subject: dry\r\n\r\ndry run\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"access\",action=\"would_reject\"}"),
        Some(1.0)
    );
}

#[test]
fn access_config_errors_say_what_to_fix() {
    for (config, expected) in [
        (
            "[[access.rules]]\ncheck = \"client\"\nvalues = [\"example.com\"]\naction = \"deny\"\n",
            "not an address or a network",
        ),
        (
            "[[access.rules]]\ncheck = \"sender\"\nvalues = [\"a@b.example\"]\naction = \"skip\"\n",
            "use \"allow\" for senders",
        ),
        (
            "[[access.rules]]\ncheck = \"client\"\nfile = \"/nonexistent/list\"\naction = \"deny\"\n",
            "cannot read file /nonexistent/list",
        ),
        (
            "[[access.rules]]\ncheck = \"helo\"\nvalues = [\"/([/\"]\naction = \"deny\"\n",
            "not a valid regular expression",
        ),
    ] {
        let err = attitude_test_support::config_error(config);
        assert!(err.contains(expected), "{config}\n=> {err}");
    }
}

#[test]
fn greylisting_defers_the_first_attempt_and_survives_a_restart() {
    let recorder = Recorder::start();
    let dir = attitude_test_support::scratch_dir("greylist");
    let state = dir.join("greylist.txt");
    let config = format!(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\nfile = {state:?}\n\
         [timeouts]\ndrain_delay = \"0s\"\n"
    );
    let message = dir.join("m.eml");
    std::fs::write(&message, "Subject: grey\r\n\r\nhello\r\n").unwrap();
    let attitude = Attitude::start(&config, &[recorder.addr]);
    let send = |attitude: &Attitude, to: &str| {
        let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
        assert!(c.cmd("EHLO grey.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@sender.example>").starts_with("250"));
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        if r.starts_with("250") {
            assert!(c.cmd("DATA").starts_with("354"));
            c.send(b"Subject: grey\r\n\r\nhello\r\n.\r\n");
            let done = c.reply();
            assert!(done.starts_with("250"), "{done}");
        }
        c.cmd("QUIT");
        r
    };
    let started = std::time::Instant::now();
    let r = send(&attitude, "b@example.com");
    assert!(
        r.starts_with("451 4.7.1") && r.contains("Greylisted"),
        "{r}"
    );
    let r = send(&attitude, "b@example.com");
    assert!(r.starts_with("451 4.7.1"), "early retry: {r}");
    // A second triplet, greylisted before the restart.
    assert!(send(&attitude, "c@example.com").starts_with("451"));
    // smtplib (a real client) is deferred too: it gets 451 for its only recipient.
    let (accepted, out) = smtplib(
        "send",
        attitude.smtp,
        "other@sender.example",
        "d@example.com",
        &message,
    );
    assert!(!accepted && out.contains("451"), "{out}");
    assert!(recorder.messages().is_empty());

    std::thread::sleep(
        Duration::from_secs(2).saturating_sub(started.elapsed()) + Duration::from_millis(200),
    );
    assert!(
        send(&attitude, "b@example.com").starts_with("250"),
        "retry after the delay"
    );
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"greylist\",action=\"defer\"}"),
        Some(4.0)
    );

    // Restart: SIGTERM saves the greylist, the next process loads it.
    let mut attitude = attitude;
    attitude.peer.signal("TERM");
    assert!(attitude.peer.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("c@example.com")
    );
    let restarted = Attitude::start(&config, &[recorder.addr]);
    assert!(
        send(&restarted, "c@example.com").starts_with("250"),
        "the first attempt before the restart counts"
    );
    assert!(
        send(&restarted, "b@example.com").starts_with("250"),
        "passed triplets too"
    );
    assert_eq!(recorder.messages().len(), 3);
}

#[test]
fn pregreet_refuses_early_talkers_and_remembers_patient_clients() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [pregreet]\nenabled = true\npause = \"1s\"\n",
        &[recorder.addr],
    );
    // An early talker: EHLO before the greeting ends.
    let mut early = Client::connect_raw_from(attitude.smtp, OUTSIDER);
    early.send(b"EHLO early.test\r\n");
    let greeting = early.reply();
    assert!(
        greeting.starts_with("220-") && greeting.contains("\n220 "),
        "{greeting}"
    );
    let r = early.reply();
    assert!(
        r.starts_with("554 5.5.1"),
        "refused at its first command: {r}"
    );
    assert!(early.is_closed());
    // It is remembered: refused at once next time.
    let started = std::time::Instant::now();
    let (mut again, greeting) = Client::connect_from(attitude.smtp, OUTSIDER);
    assert!(greeting.starts_with("554 5.5.1"), "{greeting}");
    assert!(again.is_closed());
    assert!(started.elapsed() < Duration::from_millis(500));

    // A patient client waits out the pause once ...
    let started = std::time::Instant::now();
    let (mut c, greeting) = Client::connect_from(attitude.smtp, TRUSTED);
    assert!(
        greeting.starts_with("220-") && greeting.contains("\n220 "),
        "{greeting}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    c.start_data("a@sender.example", &["b@example.com"]);
    c.send(b"Subject: patient\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    // ... and is greeted at once on its next connection.
    let started = std::time::Instant::now();
    let (mut c, greeting) = Client::connect_from(attitude.smtp, TRUSTED);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    c.cmd("QUIT");
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"pregreet\",action=\"reject\"}"),
        Some(2.0)
    );
    assert_eq!(
        attitude.metric("attitude_sessions_ended_total{result=\"refused\"}"),
        Some(2.0)
    );
}

#[test]
fn pregreet_dry_run_serves_early_talkers() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [pregreet]\nenabled = true\npause = \"500ms\"\nmultiline = false\nmode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let mut early = Client::connect_raw_from(attitude.smtp, OUTSIDER);
    early.send(b"EHLO early.test\r\n");
    assert!(early.reply().starts_with("220 "));
    assert!(early.reply().starts_with("250"), "served in dry-run");
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"pregreet\",action=\"would_reject\"}"),
        Some(1.0)
    );
}

#[test]
fn the_greylist_file_is_saved_while_running_so_a_kill_loses_little() {
    let recorder = Recorder::start();
    let dir = attitude_test_support::scratch_dir("greylist-kill");
    let state = dir.join("greylist.txt");
    let config = format!(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\nfile = {state:?}\n\
         save_interval = \"1s\"\n"
    );
    let rcpt = |attitude: &Attitude| {
        let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
        assert!(c.cmd("EHLO grey.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@sender.example>").starts_with("250"));
        let r = c.cmd("RCPT TO:<b@example.com>");
        c.cmd("QUIT");
        r
    };
    let attitude = Attitude::start(&config, &[recorder.addr]);
    assert!(rcpt(&attitude).starts_with("451 4.7.1"));
    // Written within the interval, without a shutdown.
    assert!(
        attitude_test_support::wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(&state).is_ok_and(|t| t.contains("b@example.com"))
        }),
        "the triplet never reached {}",
        state.display()
    );
    attitude.peer.signal("KILL");
    drop(attitude);
    std::thread::sleep(Duration::from_millis(1100));
    // The next process remembers the first attempt: the retry passes.
    let attitude = Attitude::start(&config, &[recorder.addr]);
    let r = rcpt(&attitude);
    assert!(r.starts_with("250"), "after a kill -9: {r}");
}

#[test]
fn greylisting_dry_run_counts_and_lets_through() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [greylist]\nenabled = true\nmode = \"dry-run\"\n",
        &[recorder.addr],
    );
    let (mut c, _) = Client::connect_from(attitude.smtp, OUTSIDER);
    c.start_data("a@sender.example", &["b@example.com"]);
    c.send(b"Subject: grey\r\n\r\ndry run\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"greylist\",action=\"would_defer\"}"),
        Some(1.0)
    );
}

#[test]
fn a_listener_can_greylist_while_the_others_do_not() {
    // Greylisting off at the top level, on for the MX listener only: the store is made for it.
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\npolicy.greylist.enabled = true\n\
         [[listeners]]\nname = \"internal\"\naddress = \"127.0.0.1:0\"\n",
        &[recorder.addr],
    );
    let rcpt = |name: &str| {
        let mut c = Client::connect(attitude.listener(name));
        c.cmd("EHLO client.test");
        assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
        c.cmd("RCPT TO:<b@example.com>")
    };
    let r = rcpt("mx");
    assert!(r.starts_with("451 4.7.1"), "greylisted on mx: {r}");
    let r = rcpt("internal");
    assert!(r.starts_with("250"), "not on internal: {r}");
}

#[test]
fn pregreet_verdicts_hold_on_every_listener_and_across_a_reload() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [pregreet]\nenabled = true\npause = \"1s\"\n[limits]\nmax_recipients = 50\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\n",
        &[recorder.addr],
    );
    let other = attitude.listener("other");
    // An early talker on one listener is refused at once on the other.
    let mut early = Client::connect_raw_from(attitude.smtp, OUTSIDER);
    early.send(b"EHLO early.test\r\n");
    early.reply();
    assert!(early.reply().starts_with("554 5.5.1"));
    let (_c, greeting) = Client::connect_from(other, OUTSIDER);
    assert!(greeting.starts_with("554 5.5.1"), "{greeting}");
    // A patient client waits once, then is greeted at once on the other listener ...
    let patient: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let (mut c, greeting) = Client::connect_from(attitude.smtp, patient);
    assert!(greeting.contains("\n220 "), "{greeting}");
    c.cmd("QUIT");
    let started = std::time::Instant::now();
    let (mut c, greeting) = Client::connect_from(other, patient);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(started.elapsed() < Duration::from_millis(800));
    c.cmd("QUIT");
    // ... and after a reload.
    attitude.reload("max_recipients = 50", "max_recipients = 60");
    let started = std::time::Instant::now();
    let (mut c, greeting) = Client::connect_from(attitude.smtp, patient);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(started.elapsed() < Duration::from_millis(800));
    c.cmd("QUIT");
    let (_c, greeting) = Client::connect_from(attitude.smtp, OUTSIDER);
    assert!(
        greeting.starts_with("554 5.5.1"),
        "after the reload: {greeting}"
    );
}
