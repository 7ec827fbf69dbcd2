//! Stress mode end to end: real sockets fill a share of `max_sessions`, stress begins (metric,
//! log), a client that drips a byte every 3 s is closed within 15 s while a normal client is
//! served and trusted sessions keep their own timeouts, and stress ends below `leave_at`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use attitude_test_support::{Attitude, Client, Recorder, wait_for};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn stress_begins_at_its_share_closes_a_dripping_client_and_ends_with_hysteresis() {
    let backend = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nmax_sessions = 10\nexempt_networks = []\n\
         [connections.per_client]\nlimit = 100\n[connections.rate]\nper_minute = 0\n\
         [relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.8/29\"]\n\
         [tarpit]\nsuspicious_delay = \"0s\"\ndelay_per_error = \"0s\"\n\
         [stress]\nenter_at = 0.5\nleave_at = 0.2\n",
        &[backend.addr],
    );
    assert_eq!(attitude.metric("attitude_stress"), Some(0.0));
    // Five idle sessions, from a trusted network (they keep their own timeouts, and hold the
    // share): half of max_sessions.
    let idle: Vec<Client> = (0..5)
        .map(|i| {
            let (c, greeting) = Client::connect_from(attitude.smtp, ip(10 + i));
            assert!(greeting.starts_with("220"), "{greeting}");
            c
        })
        .collect();
    let began = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || attitude
            .metric("attitude_stress")
            == Some(1.0)),
        "stress mode on"
    );
    // A client that drips a byte every 3 s is closed within 15 s.
    let smtp = attitude.smtp;
    let drip = std::thread::spawn(move || {
        let (mut c, _) = Client::connect_from(smtp, ip(30));
        let started = Instant::now();
        for byte in b"EHLO a-very-slow-client.example.org" {
            if !c.try_send(&[*byte]) {
                break;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        started.elapsed()
    });
    // A normal client is served meanwhile.
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(40));
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: under stress\r\n\r\nserved\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    let dripped = drip.join().unwrap();
    assert!(
        dripped <= Duration::from_secs(16),
        "the dripping client held on for {dripped:?}"
    );
    // The idle sessions end, and stress ends below 2 sessions.
    drop(idle);
    assert!(
        wait_for(Duration::from_secs(20), || attitude
            .metric("attitude_stress")
            == Some(0.0)),
        "stress mode off"
    );
    assert!(began.elapsed() < Duration::from_secs(30));
    assert_eq!(
        attitude.metric("attitude_stress_transitions_total{to=\"on\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_stress_transitions_total{to=\"off\"}"),
        Some(1.0)
    );
    let log = attitude.peer.stderr().join("\n");
    assert!(
        log.contains("stress mode on") && log.contains("stress mode off"),
        "{log}"
    );
}

#[test]
fn under_stress_the_pregreet_pause_and_the_refusal_delay_are_the_stress_ones() {
    let backend = Recorder::start();
    let attitude = Attitude::start(
        "[connections]\nmax_sessions = 10\nexempt_networks = []\n\
         [connections.per_client]\nlimit = 1\n[connections.rate]\nper_minute = 0\n\
         [relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.8/29\"]\n\
         [tarpit]\nsuspicious_delay = \"0s\"\nrefusal_delay = \"5s\"\n\
         [pregreet]\nenabled = true\npause = \"6s\"\n\
         [stress]\nenter_at = 0.5\nleave_at = 0.2\n",
        &[backend.addr],
    );
    let _idle: Vec<Client> = (0..5)
        .map(|i| Client::connect_from(attitude.smtp, ip(10 + i)).0)
        .collect();
    assert!(
        wait_for(Duration::from_secs(2), || attitude
            .metric("attitude_stress")
            == Some(1.0)),
        "stress mode on"
    );
    // The pregreet pause is 2 s under stress, not 6.
    let started = Instant::now();
    let (mut first, greeting) = Client::connect_from(attitude.smtp, ip(50));
    assert!(greeting.starts_with("220"), "{greeting}");
    let paused = started.elapsed();
    assert!(
        paused >= Duration::from_millis(1900) && paused < Duration::from_secs(4),
        "paused {paused:?}"
    );
    // A second session from that client is over its limit: refused after 1 s, not 5.
    let started = Instant::now();
    let (_, greeting) = Client::connect_from(attitude.smtp, ip(50));
    assert!(greeting.starts_with("421"), "{greeting}");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "held {held:?}"
    );
    first.cmd("QUIT");
}
