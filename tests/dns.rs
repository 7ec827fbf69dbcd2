//! DNS policies end to end (DNSBL/DNSWL scoring, SPF) against an in-process DNS server
//! (hickory-server), never the internet. DNSBL: a listed client is refused before the greeting,
//! a weighted listing below the threshold is served, an allowlisted client skips greylisting, a
//! DNS timeout fails open and is counted, dry-run counts. SPF: fail refused, the rest through.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use attitude_test_support::{Attitude, Client, DnsServer, Recorder, Rr, silent_nameserver};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn dns() -> DnsServer {
    let a = |last| Rr::A(Ipv4Addr::new(127, 0, 0, last));
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
            ("4.0.0.127.wl.test.", Rr::A(Ipv4Addr::new(127, 0, 9, 2))),
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

fn spf_dns() -> DnsServer {
    DnsServer::start(
        "test.",
        &[
            ("spf-pass.test.", Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all")),
            ("spf-fail.test.", Rr::Txt("v=spf1 ip4:192.0.2.1 -all")),
            ("spf-soft.test.", Rr::Txt("v=spf1 ~all")),
        ],
    )
}

fn spf_config(nameserver: std::net::SocketAddr, reject_fail: bool) -> String {
    format!(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [dns]\nnameservers = [\"{nameserver}\"]\ntimeout = \"1s\"\n\
         [spf]\nenabled = true\nreject_fail = {reject_fail}\n"
    )
}

fn mail_from(attitude: &Attitude, sender: &str) -> (String, Client) {
    let (mut c, greeting) = Client::connect_from(attitude.smtp, ip(2));
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO spf.test").starts_with("250"));
    (c.cmd(&format!("MAIL FROM:<{sender}>")), c)
}

#[test]
fn spf_fail_is_refused_pass_and_softfail_go_through() {
    let dns = spf_dns();
    let recorder = Recorder::start();
    let attitude = Attitude::start(&spf_config(dns.addr, true), &[recorder.addr]);
    let (r, mut c) = mail_from(&attitude, "forger@spf-fail.test");
    assert!(r.starts_with("550 5.7.23"), "{r}");
    // Nothing can follow the refused sender.
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("503"));
    c.cmd("QUIT");
    for sender in [
        "real@spf-pass.test",
        "maybe@spf-soft.test",
        "nobody@nospf.test",
    ] {
        let (r, mut c) = mail_from(&attitude, sender);
        assert!(r.starts_with("250"), "{sender}: {r}");
        assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: spf\r\n\r\nhello\r\n.\r\n");
        assert!(c.reply().starts_with("250"));
        c.cmd("QUIT");
    }
    let senders: Vec<String> = recorder
        .messages()
        .into_iter()
        .map(|m| m.mail_from)
        .collect();
    assert_eq!(
        senders,
        [
            "real@spf-pass.test",
            "maybe@spf-soft.test",
            "nobody@nospf.test"
        ]
    );
    for (result, n) in [
        ("fail", 1.0),
        ("pass", 1.0),
        ("softfail", 1.0),
        ("none", 1.0),
    ] {
        assert_eq!(
            attitude.metric(&format!(
                "attitude_spf_results_total{{result=\"{result}\"}}"
            )),
            Some(n),
            "{result}"
        );
    }
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"spf\",action=\"reject\"}"),
        Some(1.0)
    );
}

#[test]
fn spf_fail_only_counted_when_not_rejecting() {
    let dns = spf_dns();
    let recorder = Recorder::start();
    let attitude = Attitude::start(&spf_config(dns.addr, false), &[recorder.addr]);
    let (r, mut c) = mail_from(&attitude, "forger@spf-fail.test");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"spf\",action=\"would_reject\"}"),
        Some(1.0)
    );
}

#[test]
fn dnsbl_scores_are_cached_for_every_listener_with_the_same_zones() {
    let dns = dns();
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &config(
            dns.addr,
            "[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
             [[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\n\
             [[listeners]]\nname = \"strict\"\naddress = \"127.0.0.1:0\"\n\
             policy.dnsbl = { zones = [\"bl.test=127.0.0.[2..11]*3\"] }\n",
        ),
        &[recorder.addr],
    );
    let lookups = || {
        attitude
            .metric("attitude_dnsbl_lookups_total{zone=\"bl.test\",result=\"listed\"}")
            .unwrap_or(0.0)
    };
    let (_c, greeting) = Client::connect_from(attitude.smtp, ip(2));
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert_eq!(lookups(), 1.0);
    // The same zones on another listener: the score is the process's, no new lookup.
    let (_c, greeting) = Client::connect_from(attitude.listener("other"), ip(2));
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert_eq!(lookups(), 1.0);
    // Other zones are another score: looked up again.
    let (_c, greeting) = Client::connect_from(attitude.listener("strict"), ip(2));
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert_eq!(lookups(), 2.0);
}

#[test]
fn a_dry_run_dnsbl_marks_nobody_so_nobody_is_slowed() {
    let dns = dns();
    let recorder = Recorder::start();
    let config = |mode: &str| {
        format!(
            "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
             [tarpit]\nsuspicious_delay = \"2s\"\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n\
             [dnsbl]\nenabled = true\nthreshold = 3\nmode = \"{mode}\"\n\
             zones = [\"bl.test=127.0.0.[2..11]*3\", \"weak.test*1\"]\n",
            dns.addr
        )
    };
    // 127.0.0.3 scores 1 (weak.test): under the threshold, marked suspicious when enforced.
    let ehlo_time = |attitude: &Attitude| {
        let (mut c, greeting) = Client::connect_from(attitude.smtp, ip(3));
        assert!(greeting.starts_with("220"), "{greeting}");
        let started = Instant::now();
        assert!(c.cmd("EHLO weak.test").starts_with("250"));
        started.elapsed()
    };
    let enforced = Attitude::start(&config("enforce"), &[recorder.addr]);
    assert!(
        ehlo_time(&enforced) >= Duration::from_secs(2),
        "the tarpit holds a suspicious client"
    );
    let dry = Attitude::start(&config("dry-run"), &[recorder.addr]);
    let took = ehlo_time(&dry);
    assert!(
        took < Duration::from_secs(1),
        "a dry run changes nothing a client sees: {took:?}"
    );
}
