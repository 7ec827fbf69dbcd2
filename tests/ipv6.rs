//! IPv6 end to end: a listener on `[::1]`, clients from `::1`, backends on `[::1]`, PROXY v2
//! with IPv6 addresses (per-client keys and greylisting by /64), and XCLIENT's `ADDR=IPV6:...`
//! read by a real Postfix.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use std::time::Duration;

use attitude_test_support::{Attitude, Client, Postfix, Recorder, wait_for};

const LOOPBACK6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A PROXY v2 header (TCP over IPv6) for `src` connecting to `[2001:db8::25]:25`.
fn v2_tcp6(src: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&"2001:db8::25".parse::<Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

#[test]
fn a_listener_on_ipv6_loopback_relays_a_client_from_it_to_a_backend_on_it() {
    let recorder = Recorder::start_args(&["--listen", "[::1]:0"]);
    assert!(recorder.addr.is_ipv6(), "{}", recorder.addr);
    let attitude = Attitude::start(
        "listen = \"[::1]:0\"\n[tarpit]\nrefusal_delay = \"0s\"\n\
         [connections]\nexempt_networks = []\n\
         [connections.per_client]\nlimit = 1\n",
        &[recorder.addr],
    );
    assert!(attitude.smtp.is_ipv6(), "{}", attitude.smtp);
    let (mut c, greeting) = Client::connect_from(attitude.smtp, LOOPBACK6);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO six.test").starts_with("250"));
    // ::1 is trusted by default: it may relay anywhere.
    c.start_data("alice@example.org", &["bob@elsewhere.example"]);
    c.send(b"Subject: over IPv6\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    // The per-client limit counts ::1's /64: a second session from it is over the limit.
    let (_second, refused) = Client::connect_from(attitude.smtp, LOOPBACK6);
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    c.cmd("QUIT");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    let trace = m[0].trace.clone().expect("trace header");
    assert!(trace.contains("from client.test ([IPv6:::1])"), "{trace}");
}

#[test]
fn ipv6_clients_behind_proxy_v2_are_keyed_by_their_64_and_greylisted_by_it() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [proxy_protocol]\nenabled = true\nsources = [\"127.0.0.1/32\"]\n\
         [connections.per_client]\nlimit = 1\n[tarpit]\nrefusal_delay = \"0s\"\n\
         [greylist]\nenabled = true\ndelay = \"1s\"\n",
        &[recorder.addr],
    );
    let balancer: IpAddr = "127.0.0.1".parse().unwrap();
    let a: Ipv6Addr = "2001:db8:1:2::7".parse().unwrap();
    let same_64: Ipv6Addr = "2001:db8:1:2::99".parse().unwrap();
    let other_64: Ipv6Addr = "2001:db8:1:3::7".parse().unwrap();
    let open = |src: Ipv6Addr, port: u16| {
        let mut c = Client::connect_raw_from(attitude.smtp, balancer);
        c.send(&v2_tcp6(src, port));
        let greeting = c.reply();
        (c, greeting)
    };
    let (mut first, greeting) = open(a, 40000);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(first.cmd("EHLO six.test").starts_with("250"));
    // Another address of the same /64 is the same client: over its limit of 1.
    let (_c, refused) = open(same_64, 40001);
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    // Another /64 is another client.
    let (mut other, greeting) = open(other_64, 40002);
    assert!(greeting.starts_with("220"), "{greeting}");
    other.cmd("QUIT");
    // Greylisting keys the /64 too: deferred from ::7, passed from ::99 after the delay.
    assert!(
        first
            .cmd("MAIL FROM:<alice@sender.example>")
            .starts_with("250")
    );
    let deferred = first.cmd("RCPT TO:<bob@example.com>");
    assert!(deferred.starts_with("451 4.7.1"), "{deferred}");
    first.cmd("QUIT");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (mut retry, greeting) = open(same_64, 40003);
    assert!(greeting.starts_with("220"), "{greeting}");
    retry.cmd("EHLO six.test");
    retry.start_data("alice@sender.example", &["bob@example.com"]);
    retry.send(b"Subject: greylisted, then passed\r\n\r\nhi\r\n.\r\n");
    let passed = retry.reply();
    assert!(passed.starts_with("250"), "{passed}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    let trace = m[0].trace.clone().expect("trace");
    assert!(trace.contains("[IPv6:2001:db8:1:2::99]"), "{trace}");
}

#[test]
fn xclient_tells_postfix_an_ipv6_client_in_its_own_form() {
    // Postfix reads IPv6 client addresses only with IPv6 on (it still listens on 127.0.0.1).
    let postfix = Postfix::start_with("inet_protocols = all\n");
    let attitude = Attitude::start(
        &format!(
            "[relay]\nlocal_domains = [\"example.com\"]\n\
             [proxy_protocol]\nenabled = true\nsources = [\"127.0.0.1/32\"]\n\
             [backend]\nservers = [\"{}\"]\nidentity = \"xclient\"\n",
            postfix.reidentify
        ),
        &[],
    );
    // Postfix's first health check can be slow on a busy machine: wait until it is up.
    assert!(
        wait_for(Duration::from_secs(20), || attitude.http_get("/readyz").0
            == 200),
        "Postfix never came up:\n{}",
        postfix.log()
    );
    let mut c = Client::connect_raw_from(attitude.smtp, "127.0.0.1".parse().unwrap());
    c.send(&v2_tcp6("2001:db8::7".parse().unwrap(), 40000));
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    c.start_data("a@sender.example", &["b@example.com"]);
    c.send(b"Subject: xclient over IPv6\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.contains("queued as"), "Postfix's own 250: {r}");
    let id = r.trim().rsplit(' ').next().unwrap().to_owned();
    let line = postfix.wait_log(&[&format!("{id}: client=")]);
    let line = line.unwrap_or_else(|| panic!("no {id} in:\n{}", postfix.log()));
    assert!(line.ends_with("client=unknown[2001:db8::7]"), "{line}");
}

#[test]
fn one_listener_binds_both_families() {
    // Two addresses, one listener (its policies once): the same port on 127.0.0.1 and ::1.
    let recorder = Recorder::start();
    let port = attitude_test_support::free_port();
    let attitude = Attitude::start(
        &format!(
            "[[listeners]]\nname = \"mx\"\naddress = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\n"
        ),
        &[recorder.addr],
    );
    for addr in [
        SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        SocketAddr::new(LOOPBACK6, port),
    ] {
        let mut c = Client::connect(addr);
        assert!(c.cmd("EHLO both.test").starts_with("250"), "{addr}");
        c.cmd("QUIT");
    }
    drop(attitude);
}
