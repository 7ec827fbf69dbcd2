//! DNSBL/DNSWL scoring end to end, against an in-process DNS server (hickory-server): a listed
//! client is refused before the greeting, a weighted listing below the threshold is served, an
//! allowlisted client skips greylisting, a DNS timeout fails open and is counted, dry-run counts.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use attitude_test_support::{Attitude, Client, DnsServer, Recorder, silent_nameserver};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn dns() -> DnsServer {
    let a = |last| Ipv4Addr::new(127, 0, 0, last);
    DnsServer::start(
        "test.",
        &[
            // 127.0.0.2: on the blocklist and the weak list.
            ("2.0.0.127.bl.test.", a(2)),
            ("2.0.0.127.weak.test.", a(2)),
            // 127.0.0.3: only on the weak list.
            ("3.0.0.127.weak.test.", a(2)),
            // 127.0.0.4: on the blocklist, but also on the allowlist.
            ("4.0.0.127.bl.test.", a(2)),
            ("4.0.0.127.wl.test.", Ipv4Addr::new(127, 0, 9, 2)),
            // 127.0.0.6: a blocklist answer outside the filter (not a listing).
            ("6.0.0.127.bl.test.", a(1)),
        ],
    )
}

fn config(nameserver: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [tarpit]\nsuspicious_delay = \"0s\"\n\
         [dns]\nnameservers = [\"{nameserver}\"]\ntimeout = \"500ms\"\n\
         [dnsbl]\nenabled = true\nthreshold = 3\n\
         zones = [\"bl.test=127.0.0.[2..11]*3\", \"weak.test*1\", \"wl.test=127.0.[0..255].[1..3]*-5\"]\n{extra}"
    )
}

fn send(attitude: &Attitude, from: IpAddr) -> String {
    let (mut c, greeting) = Client::connect_from(attitude.smtp, from);
    assert!(greeting.starts_with("220"), "{from}: {greeting}");
    assert!(c.cmd("EHLO dnsbl.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.example>").starts_with("250"));
    let r = c.cmd("RCPT TO:<b@example.com>");
    if r.starts_with("250") {
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: dnsbl\r\n\r\nhello\r\n.\r\n");
        let done = c.reply();
        c.cmd("QUIT");
        return done;
    }
    r
}

#[test]
fn listed_weighted_and_allowlisted_clients() {
    let dns = dns();
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &config(dns.addr, "[greylist]\nenabled = true\n"),
        &[recorder.addr],
    );
    // Listed (3 + 1): refused before the greeting, naming the lists.
    let (mut c, greeting) = Client::connect_from(attitude.smtp, ip(2));
    assert!(
        greeting.starts_with("554 5.7.1") && greeting.contains("bl.test, weak.test"),
        "{greeting}"
    );
    assert!(c.is_closed());
    // Weighted below the threshold (1): served; greylisted like anyone else.
    assert!(send(&attitude, ip(3)).starts_with("451 4.7.1"));
    // An answer outside the zone's filter is not a listing.
    assert!(send(&attitude, ip(6)).starts_with("451 4.7.1"));
    // Allowlisted (3 - 5): served and not greylisted.
    assert!(send(&attitude, ip(4)).starts_with("250"));
    assert_eq!(
        recorder.messages().len(),
        1,
        "only the allowlisted client's message"
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"dnsbl\",action=\"reject\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_dnsbl_lookups_total{zone=\"bl.test\",result=\"listed\"}"),
        Some(2.0)
    );
    // Scores are cached: a second connection asks no DNS.
    let before = attitude
        .metric("attitude_dnsbl_cache_hits_total")
        .unwrap_or(0.0);
    let (_c, greeting) = Client::connect_from(attitude.smtp, ip(2));
    assert!(greeting.starts_with("554"));
    assert_eq!(
        attitude.metric("attitude_dnsbl_cache_hits_total"),
        Some(before + 1.0)
    );
}

#[test]
fn dns_timeout_fails_open_and_is_counted() {
    let (_silent, addr) = silent_nameserver();
    let recorder = Recorder::start();
    let attitude = Attitude::start(&config(addr, ""), &[recorder.addr]);
    let started = Instant::now();
    assert!(
        send(&attitude, ip(2)).starts_with("250"),
        "served without an answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude.metric("attitude_dnsbl_lookups_total{zone=\"bl.test\",result=\"error\"}"),
        Some(1.0)
    );
}

#[test]
fn dry_run_serves_listed_clients_and_counts_them() {
    let dns = dns();
    let recorder = Recorder::start();
    let attitude = Attitude::start(&config(dns.addr, "mode = \"dry-run\"\n"), &[recorder.addr]);
    assert!(send(&attitude, ip(2)).starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"dnsbl\",action=\"would_reject\"}"),
        Some(1.0)
    );
}
