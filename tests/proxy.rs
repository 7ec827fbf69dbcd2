//! PROXY protocol in: a header from the load balancer sets the client address every policy sees;
//! the same header from anyone else is refused; the trust-boundary guard refuses to start; the
//! backend is told the address from the header (PROXY v2 or XCLIENT out).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use attitude_test_support::{Attitude, Client, Postfix, Recorder, config_error};

const BALANCER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A PROXY v2 header (TCP over IPv4) for `src` connecting to 127.0.0.1:25.
fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// A PROXY v2 LOCAL header (the balancer's own connection) that still carries an address block.
fn v2_local(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = v2(src, port);
    h[12] = 0x20;
    h
}

fn start(recorder: &Recorder) -> Attitude {
    Attitude::start(
        "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
         [proxy_protocol]\nenabled = true\nsources = [\"127.0.0.1/32\"]\nheader_timeout = \"1s\"\n\
         [[access.rules]]\ncheck = \"client\"\nvalues = [\"192.0.2.0/24\"]\naction = \"deny\"\ntext = \"Blocked network\"\n",
        &[recorder.addr],
    )
}

#[test]
fn the_header_from_the_balancer_sets_the_client_address() {
    let recorder = Recorder::start();
    let attitude = start(&recorder);
    // v1: the real client is in a denied network.
    let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n");
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO proxied.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<a@sender.example>");
    assert!(r.starts_with("554 5.7.1 Blocked network"), "{r}");
    c.cmd("QUIT");
    // v2: another client, served.
    let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
    c.send(&v2([198, 51, 100, 9], 40001));
    assert!(c.reply().starts_with("220"));
    c.start_data("a@sender.example", &["b@example.com"]);
    c.send(b"Subject: proxied\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    assert_eq!(recorder.messages().len(), 1);
    // The session log names the real clients, not the balancer.
    assert!(attitude_test_support::wait_for(
        std::time::Duration::from_secs(5),
        || {
            let log = attitude.peer.stderr();
            log.iter()
                .any(|l| l.contains("session end") && l.contains("198.51.100.9:40001"))
                && log
                    .iter()
                    .any(|l| l.contains("session end") && l.contains("192.0.2.7:40000"))
        }
    ));
    assert_eq!(
        attitude.metric("attitude_proxy_protocol_total{result=\"ok\"}"),
        Some(2.0)
    );
}

#[test]
fn a_local_header_keeps_the_balancers_address_whatever_block_it_carries() {
    let recorder = Recorder::start();
    let attitude = start(&recorder);
    // A LOCAL header whose address block names a denied network: the session is the
    // balancer's own, so the access rule does not apply and the mail goes through.
    for block in [[192, 0, 2, 7], [0, 0, 0, 0]] {
        let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
        c.send(&v2_local(block, 40000));
        assert!(c.reply().starts_with("220"));
        c.start_data("a@sender.example", &["b@example.com"]);
        c.send(b"Subject: local\r\n\r\nhello\r\n.\r\n");
        let r = c.reply();
        assert!(r.starts_with("250"), "LOCAL with {block:?}: {r}");
        c.cmd("QUIT");
    }
    assert_eq!(recorder.messages().len(), 2);
    assert_eq!(
        attitude.metric("attitude_proxy_protocol_total{result=\"local\"}"),
        Some(2.0)
    );
    let log = attitude.peer.stderr();
    assert!(
        !log.iter()
            .any(|l| l.contains("192.0.2.7") || l.contains("client=0.0.0.0")),
        "the address block is never the client: {log:?}"
    );
}

#[test]
fn headers_from_strangers_and_garbage_are_refused() {
    let recorder = Recorder::start();
    let attitude = start(&recorder);
    let mut c = Client::connect_raw_from(attitude.smtp, STRANGER);
    c.send(b"PROXY TCP4 10.9.9.9 127.0.0.1 40000 25\r\n");
    assert!(c.try_reply().is_none(), "closed without a greeting");
    let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
    c.send(b"EHLO no-header.test\r\n");
    assert!(c.try_reply().is_none());
    let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
    assert!(c.try_reply().is_none(), "no header within the timeout");
    assert_eq!(
        attitude.metric("attitude_proxy_protocol_total{result=\"untrusted\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_proxy_protocol_total{result=\"invalid\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_proxy_protocol_total{result=\"timeout\"}"),
        Some(1.0)
    );
    assert!(recorder.messages().is_empty());
}

#[test]
fn trusting_the_balancer_without_proxy_protocol_refuses_to_start() {
    let err = config_error(
        "[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [proxy_protocol]\nsources = [\"10.1.2.0/24\"]\n",
    );
    assert!(
        err.contains("open relay") && err.contains("enabled = true"),
        "{err}"
    );
    // Per listener: a listener that opts out of PROXY while the balancer's network is trusted.
    let err = config_error(
        "[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [proxy_protocol]\nenabled = true\nsources = [\"10.1.2.0/24\"]\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"internal\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = false\n",
    );
    assert!(
        err.contains("listener internal") && err.contains("open relay"),
        "{err}"
    );
}

/// `[proxy_protocol]` in from the balancer at 127.0.0.1, and the backend settings after it.
fn proxied_config(backend: SocketAddr, identity: &str) -> String {
    format!(
        "[relay]\nlocal_domains = [\"example.com\"]\n\
         [proxy_protocol]\nenabled = true\nsources = [\"127.0.0.1/32\"]\n\
         [backend]\nservers = [\"{backend}\"]\nidentity = \"{identity}\"\n"
    )
}

/// One message through a PROXY v1 or v2 header carrying `source`.
fn send_proxied(attitude: &Attitude, header: &[u8], subject: &str) -> String {
    let mut c = Client::connect_raw_from(attitude.smtp, BALANCER);
    c.send(header);
    assert!(c.reply().starts_with("220"));
    c.start_data("a@sender.example", &["b@example.com"]);
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let r = c.reply();
    c.cmd("QUIT");
    r
}

#[test]
fn the_address_from_the_header_is_what_the_backend_is_told() {
    // PROXY in, PROXY v2 out (aiosmtpd records the source of the header it got).
    let recorder = Recorder::start_args(&["--proxy"]);
    let attitude = Attitude::start(&proxied_config(recorder.addr, "proxy"), &[]);
    let r = send_proxied(
        &attitude,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n",
        "v1",
    );
    assert!(r.starts_with("250"), "{r}");
    let r = send_proxied(&attitude, &v2([198, 51, 100, 9], 40001), "v2");
    assert!(r.starts_with("250"), "{r}");
    let m = recorder.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].proxy.as_deref(), Some("192.0.2.7 40000"));
    assert_eq!(m[1].proxy.as_deref(), Some("198.51.100.9 40001"));

    // PROXY in, XCLIENT out (a real Postfix logs the client it was told about).
    let postfix = Postfix::start();
    let attitude = Attitude::start(&proxied_config(postfix.reidentify, "xclient"), &[]);
    let r = send_proxied(&attitude, &v2([203, 0, 113, 5], 40002), "xclient");
    assert!(r.contains("queued as"), "Postfix's own 250: {r}");
    let id = r.trim().rsplit(' ').next().unwrap().to_owned();
    let line = postfix.wait_log(&[&format!("{id}: client=")]);
    let line = line.unwrap_or_else(|| panic!("no {id} in:\n{}", postfix.log()));
    assert!(line.ends_with("client=unknown[203.0.113.5]"), "{line}");
}
