//! Routes by recipient domain, end to end: two pools (a real Postfix for `a.example`, aiosmtpd
//! for `b.example`), recipients of both in one transaction (452 4.5.3 for the second pool's,
//! delivered by a real Postfix client in its next transaction, each exactly once), a pool that
//! is down, route files that reload, unrouted domains refused, and routes that open no relay.

use std::net::SocketAddr;
use std::time::Duration;

use attitude_test_support::{
    Attitude, Client, Postfix, Recorder, Sink, free_port, python_peer, run, scratch_dir, wait_for,
};

/// `[backend]` (the default pool) on `default`, pool `a` on `a`, pool `b` on `b`; routes
/// `a.example` and its subdomains to `a`, `b.example` to `b`; health checks every second.
fn two_pools(default: SocketAddr, a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        "[backend]\nservers = [\"{default}\"]\n\
         [backend.health]\ninterval = \"1s\"\nrise = 1\nfall = 1\n\
         [[pools]]\nname = \"a\"\nservers = [\"{a}\"]\nhealth = {{ interval = \"1s\", rise = 1, fall = 1 }}\n\
         [[pools]]\nname = \"b\"\nservers = [\"{b}\"]\nhealth = {{ interval = \"1s\", rise = 1, fall = 1 }}\n\
         [[routes]]\ndomains = [\"a.example\", \".a.example\"]\npool = \"a\"\n\
         [[routes]]\ndomains = [\"b.example\"]\npool = \"b\"\n\
         {extra}"
    )
}

fn usable(attitude: &Attitude, pool: &str) -> Option<f64> {
    attitude.metric(&format!("attitude_backends_usable{{pool=\"{pool}\"}}"))
}

/// Waits until each of `pools` has `n` usable backends.
fn settled(attitude: &Attitude, pools: &[(&str, f64)]) {
    assert!(
        wait_for(Duration::from_secs(20), || pools
            .iter()
            .all(|(p, n)| usable(attitude, p) == Some(*n))),
        "pools not settled: {:?}",
        pools
            .iter()
            .map(|(p, _)| (p, usable(attitude, p)))
            .collect::<Vec<_>>()
    );
}

fn recipients(postcat: &str) -> Vec<String> {
    postcat
        .lines()
        .filter_map(|l| l.strip_prefix("recipient: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_domain_reaches_only_its_pool_and_a_postfix_client_delivers_the_deferred_recipients_later() {
    let postfix = Postfix::start();
    let recorder = Recorder::start();
    let sink = Sink::start();
    let attitude = Attitude::start(&two_pools(sink.addr, postfix.held, recorder.addr, ""), &[]);
    settled(&attitude, &[("default", 1.0), ("a", 1.0), ("b", 1.0)]);

    // By hand: the first recipient fixes the pool, the other pool's recipient waits.
    let mut c = Client::connect(attitude.smtp);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@a.example>").starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<one@b.example>"),
        "452 4.5.3 Too many recipients for this transaction: send this one in another"
    );
    assert!(c.cmd("RCPT TO:<two@mx.a.example>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: by hand\r\n\r\nfor a\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    assert_eq!(
        attitude.metric("attitude_relay_route_deferred_total"),
        Some(1.0)
    );

    // A real Postfix as the sending client: four recipients in one message, two per pool.
    let client = Postfix::start_with(&format!(
        "relayhost = [{}]:{}\ndefault_transport = smtp\nrelay_transport = smtp\n\
         smtp_tls_security_level = none\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n\
         queue_run_delay = 1s\n",
        attitude.smtp.ip(),
        attitude.smtp.port()
    ));
    let dir = scratch_dir("routes-postfix-client");
    let file = dir.join("m.eml");
    std::fs::write(
        &file,
        "From: alice@example.org\r\nSubject: two pools\r\n\r\nhello both\r\n",
    )
    .unwrap();
    let spec = serde_json::json!({
        "from": "alice@example.org",
        "rcpts": [["p@a.example", []], ["q@b.example", []], ["r@a.example", []], ["s@b.example", []]],
        "file": file,
    });
    let (ok, out) = run(python_peer("envelope.py")
        .arg(client.plain.ip().to_string())
        .arg(client.plain.port().to_string())
        .arg(spec.to_string()));
    assert!(ok, "{out}");
    let delivered_b = || {
        recorder
            .messages()
            .iter()
            .flat_map(|m| m.rcpt_tos.clone())
            .collect::<Vec<_>>()
    };
    // The retry comes from Postfix's own backoff (1 s); under load its timers can lag, so the
    // wait also asks it to retry now, as an operator would.
    let mut flushed = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(60), || {
            if flushed.elapsed() > Duration::from_secs(3) {
                client.flush();
                flushed = std::time::Instant::now();
            }
            delivered_b().len() >= 2 && postfix.held_messages().len() >= 2
        }),
        "not every recipient arrived: b {:?}, a {:?}\n--- client:\n{}",
        delivered_b(),
        postfix
            .held_messages()
            .iter()
            .map(|m| recipients(m))
            .collect::<Vec<_>>(),
        client.log()
    );
    // Give a duplicate time to show, then count: every recipient exactly once, on its pool.
    std::thread::sleep(Duration::from_secs(2));
    let mut b = delivered_b();
    b.sort();
    assert_eq!(b, ["q@b.example", "s@b.example"]);
    let mut a: Vec<String> = postfix
        .held_messages()
        .iter()
        .flat_map(|m| recipients(m))
        .collect();
    a.sort();
    assert_eq!(
        a,
        [
            "one@a.example",
            "p@a.example",
            "r@a.example",
            "two@mx.a.example"
        ]
    );
    assert_eq!(sink.count(), 0, "nothing for the default pool");
    for rcpt in ["p@a.example", "q@b.example", "r@a.example", "s@b.example"] {
        assert!(
            client
                .wait_log(&[&format!("to=<{rcpt}>"), "status=sent"])
                .is_some(),
            "{rcpt}:\n{}",
            client.log()
        );
    }
    assert!(
        client.log().contains("4.5.3"),
        "the client saw the deferral:\n{}",
        client.log()
    );
}

#[test]
fn a_pool_that_is_down_defers_its_domains_while_the_other_is_served() {
    let recorder = Recorder::start();
    let sink = Sink::start();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let attitude = Attitude::start(&two_pools(sink.addr, recorder.addr, dead, ""), &[]);
    settled(&attitude, &[("default", 1.0), ("a", 1.0), ("b", 0.0)]);
    assert_eq!(
        attitude.metric(&format!(
            "attitude_backend_up{{pool=\"b\",backend=\"{dead}\"}}"
        )),
        Some(0.0)
    );
    // The greeting is served (other pools are up) and ready: pool b is not required.
    assert_eq!(attitude.http_get("/readyz").0, 200);
    let mut c = Client::connect(attitude.smtp);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    let down = c.cmd("RCPT TO:<x@b.example>");
    assert!(down.starts_with("451 4.4.1"), "{down}");
    assert!(c.cmd("RCPT TO:<y@a.example>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: a\r\n\r\nserved\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    let got = recorder.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, ["y@a.example"]);
    // Marked required (a reload, no restart), pool b makes the replica unready.
    attitude.reload(
        "[[pools]]\nname = \"b\"\n",
        "[[pools]]\nname = \"b\"\nrequired = true\n",
    );
    let (code, body) = attitude.http_get("/readyz");
    assert_eq!(
        (code, body.trim()),
        (503, "no backend mail server up in pool b")
    );
}

#[test]
fn route_files_reload_unrouted_domains_are_refused_and_routes_open_no_relay() {
    let recorder = Recorder::start();
    let sink = Sink::start();
    let dir = scratch_dir("route-files");
    let routes = dir.join("partners");
    std::fs::write(&routes, "# partners\npartner.example\n").unwrap();
    let attitude = Attitude::start(
        &format!(
            "[[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n\
             [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
             policy.relay.trusted_networks = []\n\
             [backend]\nservers = [\"{}\"]\n\
             [[pools]]\nname = \"partners\"\nservers = [\"{}\"]\n\
             [[routes]]\nfile = \"{}\"\npool = \"partners\"\n\
             [routing]\nunrouted = \"reject\"\n",
            sink.addr,
            recorder.addr,
            routes.display()
        ),
        &[],
    );
    settled(&attitude, &[("default", 1.0), ("partners", 1.0)]);
    let submission = attitude.listener("submission");
    let rcpt = |listener: SocketAddr, to: &str| {
        let mut c = Client::connect(listener);
        c.cmd("EHLO client.test");
        assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
        let reply = c.cmd(&format!("RCPT TO:<{to}>"));
        c.cmd("QUIT");
        reply
    };
    assert!(rcpt(submission, "x@partner.example").starts_with("250"));
    assert_eq!(
        rcpt(submission, "x@other.example"),
        "550 5.1.2 Recipient domain not served here"
    );
    assert!(
        rcpt(submission, "postmaster").starts_with("250"),
        "<postmaster> goes to the default pool"
    );
    // A route is no permission to relay: the MX listener trusts nobody.
    assert!(rcpt(attitude.listener("mx"), "x@partner.example").starts_with("554 5.7.1"));
    // The route file changes, the configuration does not: SIGHUP applies it.
    let reloads = || {
        attitude
            .metric("attitude_config_reload_total{result=\"ok\"}")
            .unwrap_or(0.0)
    };
    let before = reloads();
    std::fs::write(&routes, "partner.example\nother.example\n").unwrap();
    attitude.peer.signal("HUP");
    assert!(wait_for(Duration::from_secs(10), || reloads() > before));
    assert!(rcpt(submission, "x@other.example").starts_with("250"));
    assert_eq!(attitude.metric("attitude_relay_unrouted_total"), Some(1.0));
}

#[test]
fn a_reload_starts_a_new_pool_and_a_removed_one_stops() {
    let first = Recorder::start();
    let second = Recorder::start();
    let attitude = Attitude::start(
        &format!("[backend]\nservers = [\"{}\"]\n# pools\n", first.addr),
        &[],
    );
    settled(&attitude, &[("default", 1.0)]);
    let deliver = |to: &str| {
        let mut c = Client::connect(attitude.smtp);
        c.cmd("EHLO client.test");
        assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
        let reply = c.reply();
        c.cmd("QUIT");
        assert!(reply.starts_with("250"), "{reply}");
    };
    let to = |r: &Recorder| {
        r.messages()
            .iter()
            .flat_map(|m| m.rcpt_tos.clone())
            .collect::<Vec<_>>()
    };
    deliver("one@b.example");
    // The pool and its route arrive with a reload: no restart.
    attitude.reload(
        "# pools\n",
        &format!(
            "[[pools]]\nname = \"b\"\nservers = [\"{}\"]\n\
             [[routes]]\ndomains = [\"b.example\"]\npool = \"b\"\n# pools\n",
            second.addr
        ),
    );
    settled(&attitude, &[("default", 1.0), ("b", 1.0)]);
    deliver("two@b.example");
    deliver("three@other.example");
    // And leave with one: b.example goes to the default pool again.
    let text = std::fs::read_to_string(&attitude.config_path).unwrap();
    let start = text.find("[[pools]]").unwrap();
    let end = text.find("# pools").unwrap();
    attitude.reload(&text[start..end], "");
    deliver("four@b.example");
    // The stopped pool counts no backends any more (no alert for a pool that is gone).
    settled(&attitude, &[("default", 1.0), ("b", 0.0)]);
    assert_eq!(attitude.metric("attitude_backends{pool=\"b\"}"), Some(0.0));
    assert_eq!(
        to(&first),
        ["one@b.example", "three@other.example", "four@b.example"]
    );
    assert_eq!(to(&second), ["two@b.example"]);
}
