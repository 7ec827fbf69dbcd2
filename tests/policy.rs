//! Policies end to end: relay control (never an open relay).

use std::net::{IpAddr, Ipv4Addr};

use attitude_test_support::{Attitude, Client, Recorder};

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
