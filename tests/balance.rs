//! The backend pool against real peers: Postfix getting the real client by XCLIENT and by PROXY
//! v2, aiosmtpd by PROXY v2, balance between equal backends and away from a slow one, DNS
//! discovery, every backend down, failover before DATA, and no message lost while backends are
//! killed under load.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attitude_test_support::{
    Attitude, Client, DnsServer, Postfix, Recorder, Rr, Sink, SmtpSink, free_port, require_tool,
    wait_for,
};

/// What became of one message sent by [`send`].
#[derive(Debug)]
enum Outcome {
    /// 250 to end of data.
    Accepted,
    /// A reply that is not 250 at some step (4xx, 5xx, 421 at the greeting).
    Refused(String),
    /// The connection broke: reset, closed or timed out.
    Broken(ErrorKind),
}

/// One SMTP session from `source` that sends one message per subject; every reply is read.
fn send(addr: SocketAddr, source: IpAddr, subjects: &[String]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind source");
    if let Err(e) = socket.connect(&addr.into()) {
        return subjects.iter().map(|_| Outcome::Broken(e.kind())).collect();
    }
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut reply = || -> Result<String, ErrorKind> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof),
                Ok(_) => {}
                Err(e) => return Err(e.kind()),
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(text);
            }
        }
    };
    let mut step = |bytes: &[u8], want: &str| -> Result<(), Outcome> {
        if !bytes.is_empty() {
            writer
                .write_all(bytes)
                .map_err(|e| Outcome::Broken(e.kind()))?;
        }
        let r = reply().map_err(Outcome::Broken)?;
        if r.starts_with(want) {
            Ok(())
        } else {
            Err(Outcome::Refused(r))
        }
    };
    let session = (|| {
        step(b"", "220")?;
        step(b"EHLO client.test\r\n", "250")
    })();
    if let Err(outcome) = session {
        outcomes.push(outcome);
        return outcomes;
    }
    for subject in subjects {
        let message = (|| {
            step(b"MAIL FROM:<load@example.org>\r\n", "250")?;
            step(b"RCPT TO:<load@example.com>\r\n", "250")?;
            step(b"DATA\r\n", "354")?;
            let body = format!("Subject: {subject}\r\n\r\nchaos\r\n.\r\n");
            step(body.as_bytes(), "250")
        })();
        match message {
            Ok(()) => outcomes.push(Outcome::Accepted),
            Err(Outcome::Broken(kind)) => {
                outcomes.push(Outcome::Broken(kind));
                return outcomes;
            }
            Err(refused) => {
                outcomes.push(refused);
                if step(b"RSET\r\n", "250").is_err() {
                    return outcomes;
                }
            }
        }
    }
    let _ = step(b"QUIT\r\n", "221");
    outcomes
}

fn subject_of(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(str::to_owned)
}

/// `smtp-source` through attitude: `sessions` in parallel, `messages` in all.
fn smtp_source(addr: SocketAddr, sessions: u32, messages: u32) -> std::process::Output {
    Command::new(require_tool("/usr/sbin/smtp-source"))
        .args(["-s", &sessions.to_string(), "-m", &messages.to_string()])
        .args([
            "-l",
            "1024",
            "-f",
            "load@example.org",
            "-t",
            "load@example.com",
        ])
        .arg(addr.to_string())
        .output()
        .expect("run smtp-source")
}

fn backends_config(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[backend]\nservers = [{}]\n{extra}", list.join(", "))
}

const FROM_5: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
const FROM_6: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
const FROM_7: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));

#[test]
fn postfix_gets_the_real_client_by_xclient_and_by_proxy() {
    let postfix = Postfix::start();

    // XCLIENT: two sessions from two addresses each time. On `reidentify` a pooled connection
    // is given the second client's identity by a second XCLIENT; on `plain` Postfix refuses a
    // second XCLIENT (it checks it against the address the first one set), so attitude learns
    // to give each session a connection of its own. Either way each message is logged with
    // its own client.
    for (backend, reused) in [(postfix.reidentify, true), (postfix.plain, false)] {
        let xclient = Attitude::start(
            &backends_config(&[backend], "identity = \"xclient\"\n"),
            &[],
        );
        for round in 0..2 {
            for (source, helo) in [(FROM_5, "five.test"), (FROM_6, "six.test")] {
                let (mut c, greeting) = Client::connect_from(xclient.smtp, source);
                assert!(greeting.starts_with("220"), "{greeting}");
                assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
                assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
                assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
                assert!(c.cmd("DATA").starts_with("354"));
                let subject = format!("xclient-{}-{round}-{source}", backend.port());
                c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
                let r = c.reply();
                assert!(r.contains("queued as"), "Postfix's own 250: {r}");
                c.cmd("QUIT");
                // The queue id of this message, then its client line.
                let id = r.trim().rsplit(' ').next().unwrap().to_owned();
                let line = postfix.wait_log(&[&format!("{id}: client=")]);
                let line = line.unwrap_or_else(|| panic!("no {id} in:\n{}", postfix.log()));
                assert!(
                    line.ends_with(&format!("client=unknown[{source}]")),
                    "message from {source} logged as {line}"
                );
            }
        }
        let hits = xclient
            .metric(&format!(
                "attitude_backend_pool_total{{pool=\"default\",backend=\"{backend}\",result=\"hit\"}}"
            ))
            .unwrap_or(0.0);
        assert_eq!(hits >= 1.0, reused, "pool hits on {backend}: {hits}");
    }

    // PROXY v2: the header carries the client address; health checks send LOCAL headers.
    let proxy = Attitude::start(
        &backends_config(&[postfix.proxied], "identity = \"proxy\"\n"),
        &[],
    );
    let (mut c, greeting) = Client::connect_from(proxy.smtp, FROM_7);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO seven.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: proxy\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.contains("queued as"), "{r}");
    c.cmd("QUIT");
    let line = postfix.wait_log(&["client=", &format!("[{FROM_7}]")]);
    assert!(line.is_some(), "no client={FROM_7} in:\n{}", postfix.log());
}

#[test]
fn aiosmtpd_gets_the_real_client_by_proxy_v2() {
    let recorder = Recorder::start_args(&["--proxy"]);
    let attitude = Attitude::start(
        &backends_config(&[recorder.addr], "identity = \"proxy\"\n"),
        &[],
    );
    for (source, n) in [(FROM_5, 1), (FROM_6, 2)] {
        let (mut c, greeting) = Client::connect_from(attitude.smtp, source);
        assert!(greeting.starts_with("220"), "{greeting}");
        c.start_data("a@example.org", &["b@example.com"]);
        c.send(format!("Subject: {n}\r\n\r\nbody\r\n.\r\n").as_bytes());
        assert!(c.reply().starts_with("250"));
        c.cmd("QUIT");
    }
    let messages = recorder.messages();
    assert_eq!(messages.len(), 2);
    for (m, source) in messages.iter().zip([FROM_5, FROM_6]) {
        let proxy = m.proxy.as_deref().unwrap_or("none");
        assert!(proxy.starts_with(&format!("{source} ")), "{proxy}");
    }
}

#[test]
fn equal_backends_share_evenly_and_a_slow_one_gets_less() {
    let sinks: Vec<SmtpSink> = (0..3).map(|_| SmtpSink::start(&[])).collect();
    let addrs: Vec<SocketAddr> = sinks.iter().map(|s| s.addr).collect();
    let attitude = Attitude::start("", &addrs);
    let out = smtp_source(attitude.smtp, 10, 900);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_for(Duration::from_secs(10), || {
        sinks.iter().map(SmtpSink::count).sum::<usize>() == 900
    }));
    let counts: Vec<usize> = sinks.iter().map(SmtpSink::count).collect();
    for c in &counts {
        assert!(
            (255..=345).contains(c),
            "each of 3 equal backends within ±15% of 300: {counts:?}"
        );
    }

    // smtp-sink -w 1: a second before it answers DATA. It holds its transactions longer, so it
    // gets fewer new ones.
    let fast = SmtpSink::start(&[]);
    let slow = SmtpSink::start(&["-w", "1"]);
    let attitude = Attitude::start("", &[fast.addr, slow.addr]);
    let out = smtp_source(attitude.smtp, 10, 300);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_for(Duration::from_secs(10), || {
        fast.count() + slow.count() == 300
    }));
    let (f, s) = (fast.count(), slow.count());
    eprintln!("fast backend {f} messages, slow backend {s}");
    assert!(s * 4 < f, "the slow backend got {s}, the fast one {f}");
}

#[test]
fn dns_discovery_adding_and_removing_an_address_moves_traffic() {
    let one = Sink::start();
    let two = Sink::start();
    let dns_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = "_smtp._tcp.mx.test.";
    let records = |ports: &[u16]| -> DnsServer {
        let mut rrs = vec![("host.test.", Rr::A(Ipv4Addr::LOCALHOST))];
        rrs.extend(
            ports
                .iter()
                .map(|p| (srv, Rr::Srv(10, 1, *p, "host.test."))),
        );
        DnsServer::start_with_ttl(dns_addr, "test.", &rrs, 1)
    };
    let mut dns = records(&[one.addr.port()]);
    let attitude = Attitude::start(
        &format!(
            "[dns]\nnameservers = [\"{dns_addr}\"]\n\
             [backend]\ndns = [{{ name = \"{srv}\", record = \"srv\", interval = \"1s\" }}]\n\
             [backend.health]\ninterval = \"1s\"\nrise = 1\n"
        ),
        &[],
    );
    let known = |n: f64| {
        wait_for(Duration::from_secs(10), || {
            attitude.metric("attitude_backends_usable{pool=\"default\"}") == Some(n)
        })
    };
    let burst = |tag: &str, n: usize| {
        let subjects: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        for subjects in subjects.chunks(1) {
            let outcomes = send(attitude.smtp, IpAddr::V4(Ipv4Addr::LOCALHOST), subjects);
            assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
        }
    };
    assert!(known(1.0));
    burst("first", 10);
    assert_eq!((one.count(), two.count()), (10, 0));

    drop(dns);
    dns = records(&[one.addr.port(), two.addr.port()]);
    assert!(known(2.0), "the second address was not discovered");
    burst("both", 40);
    let (a, b) = (one.count() - 10, two.count());
    assert_eq!(a + b, 40);
    assert!(a >= 8 && b >= 8, "traffic spread over both: {a} and {b}");

    drop(dns);
    let _dns = records(&[two.addr.port()]);
    assert!(wait_for(Duration::from_secs(10), || {
        attitude.metric("attitude_backends{pool=\"default\"}") == Some(1.0)
    }));
    let before = (one.count(), two.count());
    burst("second", 10);
    assert_eq!((one.count(), two.count()), (before.0, before.1 + 10));

    // A and AAAA records with a port of their own.
    let by_a = Attitude::start(
        &format!(
            "[dns]\nnameservers = [\"{dns_addr}\"]\n\
             [backend]\ndns = [{{ name = \"host.test.\", port = {}, interval = \"1s\" }}]\n",
            two.addr.port()
        ),
        &[],
    );
    // Until the first answer there is no backend: 421 at the greeting, /readyz 503.
    assert!(wait_for(Duration::from_secs(10), || {
        by_a.http_get("/readyz").0 == 200
    }));
    let outcomes = send(by_a.smtp, IpAddr::V4(Ipv4Addr::LOCALHOST), &["a".into()]);
    assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
}

#[test]
fn every_backend_down_means_421_at_greeting_and_one_back_is_served_within_an_interval() {
    let mut sink = Sink::start();
    let attitude = Attitude::start(
        &backends_config(
            &[sink.addr],
            "[backend.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n",
        ),
        &[],
    );
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let outcomes = send(attitude.smtp, local, &["before".into()]);
    assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
    assert_eq!(attitude.http_get("/readyz").0, 200);

    sink.kill();
    let greeting = || Client::connect_from(attitude.smtp, local).1;
    assert!(
        wait_for(Duration::from_secs(5), || greeting()
            .starts_with("421 4.3.2")),
        "no 421 at the greeting"
    );
    let (status, body) = attitude.http_get("/readyz");
    assert_eq!((status, body.trim()), (503, "no backend mail server up"));

    sink.restart();
    let back = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || greeting().starts_with("220")));
    let took = back.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "served again {took:?} after the backend came back (interval 1s)"
    );
    let outcomes = send(attitude.smtp, local, &["after".into()]);
    assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
    assert_eq!(attitude.http_get("/readyz").0, 200);
}

#[test]
fn a_backend_failing_before_data_is_replaced_without_the_client_noticing() {
    let good = Recorder::start();
    // Real faults from Postfix's smtp-sink: hang up at RCPT, 4xx to MAIL, 421 to DATA.
    let hangs_up = SmtpSink::start(&["-q", "rcpt"]);
    let tempfails = SmtpSink::start(&["-r", "mail"]);
    let closing = SmtpSink::start(&["-Q", "data"]);
    let attitude = Attitude::start(
        &backends_config(
            &[good.addr, hangs_up.addr, tempfails.addr, closing.addr],
            // Keep the faulty ones in rotation: every transaction may meet them.
            "failover_attempts = 3\n[backend.outlier]\nconsecutive_failures = 0\n",
        ),
        &[],
    );
    for i in 0..16 {
        let mut c = Client::connect(attitude.smtp);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<one@example.com>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<two@example.com>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {i}\r\n\r\nbody\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with("250"), "message {i}: {r}");
        c.cmd("QUIT");
    }
    let messages = good.messages();
    assert_eq!(messages.len(), 16);
    for m in &messages {
        assert_eq!(m.rcpt_tos, ["one@example.com", "two@example.com"]);
    }
    let failovers = attitude
        .metric("attitude_relay_failovers_total")
        .unwrap_or(0.0);
    assert!(failovers >= 3.0, "failovers: {failovers}");
}

#[test]
fn no_message_is_lost_while_backends_are_killed_under_load() {
    let sinks: Vec<Arc<Mutex<Sink>>> = (0..3)
        .map(|_| Arc::new(Mutex::new(Sink::start())))
        .collect();
    let addrs: Vec<SocketAddr> = sinks.iter().map(|s| s.lock().unwrap().addr).collect();
    let attitude = Attitude::start(
        &backends_config(
            &addrs,
            "[backend.health]\ninterval = \"1s\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(30);

    // Background load: smtp-source, started again whenever a refusal ends it (it gives up at
    // the first 4xx).
    let load = {
        let stop = stop.clone();
        let smtp = attitude.smtp;
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut child = Command::new(require_tool("/usr/sbin/smtp-source"))
                    .args(["-s", "4", "-m", "100000", "-l", "1024"])
                    .args(["-f", "source@example.org", "-t", "source@example.com"])
                    .arg(smtp.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("smtp-source");
                while !stop.load(Ordering::Relaxed) && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                runs += 1;
            }
            runs
        })
    };

    // Counted clients: every message has its own subject; every reply is read.
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let broken = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, accepted, refused, broken) = (
                stop.clone(),
                accepted.clone(),
                refused.clone(),
                broken.clone(),
            );
            let smtp = attitude.smtp;
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let subjects: Vec<String> =
                        (n..n + 5).map(|i| format!("chaos-{t}-{i}")).collect();
                    n += 5;
                    let outcomes = send(smtp, IpAddr::V4(Ipv4Addr::LOCALHOST), &subjects);
                    for (subject, outcome) in subjects.iter().zip(outcomes) {
                        match outcome {
                            Outcome::Accepted => {
                                accepted.lock().unwrap().insert(subject.clone());
                            }
                            Outcome::Refused(r) => refused.lock().unwrap().push(r),
                            Outcome::Broken(kind) => broken.lock().unwrap().push(kind),
                        }
                    }
                }
            })
        })
        .collect();

    // Chaos: kill -9 one backend every 3 s (in turn), bring it back a second later.
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_secs(2));
        let victim = &sinks[kills % sinks.len()];
        victim.lock().unwrap().kill();
        kills += 1;
        std::thread::sleep(Duration::from_secs(1));
        victim.lock().unwrap().restart();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let source_runs = load.join().unwrap();

    let recorded: Vec<Vec<u8>> = sinks
        .iter()
        .flat_map(|s| s.lock().unwrap().messages())
        .collect();
    let total = recorded.len();
    let ours: HashSet<String> = recorded
        .iter()
        .filter_map(|m| subject_of(m))
        .filter(|s| s.starts_with("chaos-"))
        .collect();
    let accepted = accepted.lock().unwrap();
    let lost: Vec<&String> = accepted.difference(&ours).collect();
    let unacknowledged = ours.difference(&accepted).count();
    let broken = broken.lock().unwrap();
    let refused = refused.lock().unwrap();
    eprintln!(
        "{kills} kills, {} accepted by counted clients, {} recorded of theirs ({unacknowledged} \
         recorded without a 250 seen), {} refused (4xx), {} broken connections; {total} messages \
         recorded in all, smtp-source ran {source_runs} times",
        accepted.len(),
        ours.len(),
        refused.len(),
        broken.len()
    );
    assert!(kills >= 8, "{kills} kills");
    assert!(accepted.len() > 200, "too little load: {}", accepted.len());
    assert!(lost.is_empty(), "accepted but not recorded: {lost:?}");
    // A backend killed after it stored a message but before its 250 arrived: the client got a
    // 4xx and will send again (a duplicate, never a loss). At most the transactions in flight
    // on the killed backend.
    assert!(
        unacknowledged <= kills * 2,
        "{unacknowledged} recorded without a 250"
    );
    assert!(
        broken.is_empty(),
        "clients saw broken connections: {broken:?}"
    );
    for r in refused.iter() {
        assert!(r.starts_with('4'), "only 4xx refusals: {r}");
    }
}

#[test]
fn a_sender_the_backend_refuses_for_good_is_refused_at_each_recipient() {
    // smtp-sink -f mail: 5xx to every MAIL. attitude answers MAIL itself and sends it with the
    // first RCPT, so the refusal is the answer to the recipients (Postfix's own
    // smtpd_delay_reject behaviour); nothing reaches DATA.
    let refuses = SmtpSink::start(&["-f", "mail"]);
    let attitude = Attitude::start("", &[refuses.addr]);
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = c.cmd("RCPT TO:<one@example.com>");
    assert!(r.starts_with("5"), "{r}");
    let again = c.cmd("RCPT TO:<two@example.com>");
    assert_eq!(again, r);
    assert!(c.cmd("DATA").starts_with("554"));
    // The connection was left clean: the next transaction goes on normally.
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<b@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.com>").starts_with("5"));
    assert_eq!(refuses.count(), 0);
}

#[test]
fn connections_per_backend_are_capped_and_a_full_pool_answers_451_in_time() {
    // smtp-sink -w 1: every transaction holds the one connection allowed for a second.
    let slow = SmtpSink::start(&["-w", "1"]);
    let attitude = Attitude::start(
        &backends_config(
            &[slow.addr],
            "max_connections = 1\nqueue_timeout = \"300ms\"\n",
        ),
        &[],
    );
    let first = std::thread::spawn({
        let smtp = attitude.smtp;
        move || send(smtp, IpAddr::V4(Ipv4Addr::LOCALHOST), &["first".into()])
    });
    // Once the first transaction holds the slot, the second waits 300 ms and is turned away.
    assert!(wait_for(Duration::from_secs(5), || {
        attitude.metric(&format!(
            "attitude_backend_in_flight{{pool=\"default\",backend=\"{}\"}}",
            slow.addr
        )) == Some(1.0)
    }));
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let waited = Instant::now();
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("451 4.4.5"), "{r}");
    assert!(
        waited.elapsed() >= Duration::from_millis(250),
        "{:?}",
        waited.elapsed()
    );
    let outcomes = first.join().unwrap();
    assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
    assert_eq!(
        attitude.metric(&format!(
            "attitude_backend_connections_open{{pool=\"default\",backend=\"{}\"}}",
            slow.addr
        )),
        Some(1.0),
        "one connection, kept in the pool"
    );
    assert_eq!(
        attitude.metric("attitude_backend_unavailable_total{pool=\"default\",reason=\"busy\"}"),
        Some(1.0)
    );
    // The slot is free again: served.
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
}

#[test]
fn weights_share_transactions() {
    let light = SmtpSink::start(&[]);
    let heavy = SmtpSink::start(&[]);
    let attitude = Attitude::start(
        &format!(
            "[backend]\nservers = [\"{}\", {{ address = \"{}\", weight = 3 }}]\n",
            light.addr, heavy.addr
        ),
        &[],
    );
    let out = smtp_source(attitude.smtp, 10, 800);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_for(Duration::from_secs(10), || {
        light.count() + heavy.count() == 800
    }));
    let (l, h) = (light.count(), heavy.count());
    eprintln!("weight 1: {l} messages, weight 3: {h}");
    assert!(h > l * 2, "weight 3 got {h}, weight 1 got {l}");
}

/// Sends one message at a time for `run`; every one must be accepted. Calls `watch` between.
fn steady_traffic(attitude: &Attitude, run: Duration, mut watch: impl FnMut()) -> usize {
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < run {
        let outcomes = send(
            attitude.smtp,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &[format!("steady-{sent}")],
        );
        assert!(matches!(outcomes[..], [Outcome::Accepted]), "{outcomes:?}");
        sent += 1;
        watch();
        std::thread::sleep(Duration::from_millis(50));
    }
    sent
}

const OUTLIERS: &str = "[backend.outlier]\nconsecutive_failures = 2\nbase_ejection = \"1s\"\n\
                        max_ejection = \"10s\"\nmax_ejected_percent = 50\n";

#[test]
fn a_backend_that_keeps_failing_is_ejected_for_longer_each_time() {
    let good = Recorder::start();
    // 4xx to every MAIL, yet it passes health checks: only outlier detection can tell.
    let bad = SmtpSink::start(&["-r", "mail"]);
    let attitude = Attitude::start(&backends_config(&[good.addr, bad.addr], OUTLIERS), &[]);
    let sent = steady_traffic(&attitude, Duration::from_millis(2500), || {});
    assert_eq!(
        good.messages().len(),
        sent,
        "every message failed over to the good one"
    );
    // Back after 1 s, failing again: ejected again, for twice as long.
    let log = attitude.peer.stderr().join("\n");
    assert!(log.contains("backoff=1s"), "{log}");
    assert!(
        log.contains("backoff=2s"),
        "the second ejection doubles:\n{log}"
    );
    assert!(
        attitude
            .metric(&format!(
                "attitude_backend_ejections_total{{pool=\"default\",backend=\"{}\"}}",
                bad.addr
            ))
            .unwrap_or(0.0)
            >= 2.0
    );
}

#[test]
fn never_more_than_the_allowed_share_of_backends_is_ejected() {
    let good = Recorder::start();
    let bad_one = SmtpSink::start(&["-r", "mail"]);
    let bad_two = SmtpSink::start(&["-r", "mail"]);
    let attitude = Attitude::start(
        &backends_config(&[good.addr, bad_one.addr, bad_two.addr], OUTLIERS),
        &[],
    );
    let mut most_ejected: f64 = 0.0;
    steady_traffic(&attitude, Duration::from_millis(1500), || {
        let ejected: f64 = [bad_one.addr, bad_two.addr]
            .iter()
            .map(|b| {
                attitude
                    .metric(&format!(
                        "attitude_backend_ejected{{pool=\"default\",backend=\"{b}\"}}"
                    ))
                    .unwrap_or(0.0)
            })
            .sum();
        most_ejected = most_ejected.max(ejected);
    });
    // Three up, at most half of them ejected: one at a time.
    assert_eq!(most_ejected, 1.0, "ejected at once: {most_ejected}");
    let log = attitude.peer.stderr().join("\n");
    assert!(
        log.contains("not ejected: too many are ejected already"),
        "{log}"
    );
}
