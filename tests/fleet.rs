//! The fleet's shared memory end to end: two attitude processes (replicas) sharing one real
//! `redis-server` on loopback. Greylisting, AUTH bans, `[[rates]]` and per-client sessions hold
//! across both; a replica killed with SIGKILL leaves no stuck session count; Redis killed under
//! load costs no session, shows in the metrics, and sharing resumes when it is back. After every
//! test, no key under the prefix lacks a TTL.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attitude_test_support::{
    Attitude, Client, Recorder, RedisServer, TestCa, attitude_bin, scratch_dir, wait_for,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `[state]` pointing at `redis`, with `extra` lines of it.
fn state(redis: &RedisServer, extra: &str) -> String {
    format!("[state]\nredis = \"{}\"\n{extra}\n", redis.url())
}

/// Two replicas with the same configuration in front of `backend`.
fn replicas(config: &str, backend: &Recorder) -> (Attitude, Attitude) {
    let a = Attitude::start(config, &[backend.addr]);
    let b = Attitude::start(config, &[backend.addr]);
    (a, b)
}

fn no_key_without_ttl(redis: &RedisServer) {
    let stuck = redis.keys_without_ttl("attitude:");
    assert!(stuck.is_empty(), "keys without a TTL: {stuck:?}");
}

const OPEN: &str = "[connections]\nexempt_networks = []\n[connections.rate]\nper_minute = 0\n\
    [relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
    [tarpit]\nsuspicious_delay = \"0s\"\ndelay_per_error = \"0s\"\nrefusal_delay = \"0s\"\n";

/// RCPT's reply in a fresh session from `from`.
fn rcpt(attitude: &Attitude, from: IpAddr, sender: &str, to: &str) -> String {
    let (mut c, _) = Client::connect_from(attitude.smtp, from);
    assert!(c.cmd("EHLO replica.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{sender}>")).starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn a_triplet_greylisted_through_one_replica_passes_through_the_other() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\n{}",
        state(&redis, "")
    );
    let (a, b) = replicas(&config, &backend);
    let r = rcpt(&a, ip(20), "news@sender.example", "bob@example.com");
    assert!(r.starts_with("451 4.7.1"), "first attempt, on A: {r}");
    let r = rcpt(&b, ip(20), "news@sender.example", "bob@example.com");
    assert!(
        r.starts_with("451 4.7.1") && r.contains("try again in"),
        "too early, on B: {r}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = rcpt(&b, ip(20), "news@sender.example", "bob@example.com");
    assert!(r.starts_with("250"), "the retry, on B: {r}");
    let r = rcpt(&a, ip(20), "news@sender.example", "bob@example.com");
    assert!(r.starts_with("250"), "and on A since: {r}");
    // The same client network (/24) from another address: the same triplet.
    let r = rcpt(&b, ip(21), "news@sender.example", "bob@example.com");
    assert!(r.starts_with("250"), "{r}");
    assert!(
        redis.keys("attitude:{gl:127.0.0.0/24}").len() >= 2,
        "the triplet and its client network are in Redis: {:?}",
        redis.keys("attitude:")
    );
    no_key_without_ttl(&redis);
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth(attitude: &Attitude, from: IpAddr, user: &str, password: &str) -> String {
    let (mut c, _) = Client::connect_from(attitude.smtp, from);
    assert!(c.cmd("EHLO guesser.test").starts_with("250"));
    c.cmd(&format!(
        "AUTH PLAIN {}",
        b64(&format!("\0{user}\0{password}"))
    ))
}

/// Waits until `attitude` offers the backend's AUTH (its startup probe learnt it).
fn offers_auth(attitude: &Attitude) {
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (mut c, _) = Client::connect_from(attitude.smtp, ip(9));
            let ehlo = c.cmd("EHLO probe.test");
            c.cmd("QUIT");
            ehlo.contains("AUTH PLAIN")
        }),
        "AUTH never offered"
    );
}

#[test]
fn auth_failures_spread_over_two_replicas_ban_on_both_at_the_combined_limit() {
    let redis = RedisServer::start();
    let backend = Recorder::start_with_accounts(&[("alice", "secret")]);
    let config = format!(
        "{OPEN}[auth]\nenabled = true\nallow_plaintext = true\nfailure_delay = \"50ms\"\n\
         max_failures_per_client = 3\nmax_failures_per_login = 4\n{}",
        state(&redis, "")
    );
    let (a, b) = replicas(&config, &backend);
    offers_auth(&a);
    offers_auth(&b);
    // The client network: A, B, then A again crosses 3.
    assert!(auth(&a, ip(30), "bob", "1").starts_with("535"));
    assert!(auth(&b, ip(30), "bob", "2").starts_with("535"));
    let r = auth(&a, ip(30), "bob", "3");
    assert!(
        r.starts_with("421 4.7.0"),
        "the third failure, anywhere, bans: {r}"
    );
    let r = auth(&b, ip(30), "alice", "secret");
    assert!(
        r.starts_with("421 4.7.0"),
        "banned on B too, even with the right password: {r}"
    );
    // The login, from four networks over both replicas.
    for (n, replica) in [(40u8, &a), (50, &b), (60, &a)] {
        let r = auth(
            replica,
            IpAddr::V4(Ipv4Addr::new(127, 0, n, 1)),
            "alice",
            "wrong",
        );
        assert!(
            r.starts_with("535"),
            "{n}: {r}\n{}",
            replica.peer.stderr().join("\n")
        );
    }
    let r = auth(
        &b,
        IpAddr::V4(Ipv4Addr::new(127, 0, 70, 1)),
        "alice",
        "wrong",
    );
    assert!(
        r.starts_with("421 4.7.0"),
        "the fourth failure on the login bans it: {r}"
    );
    let r = auth(
        &a,
        IpAddr::V4(Ipv4Addr::new(127, 0, 80, 1)),
        "alice",
        "secret",
    );
    assert!(r.starts_with("421 4.7.0"), "the login is banned on A: {r}");
    let r = auth(&a, IpAddr::V4(Ipv4Addr::new(127, 0, 80, 1)), "carol", "x");
    assert!(
        r.starts_with("535"),
        "another login from that network is not: {r}"
    );
    no_key_without_ttl(&redis);
}

#[test]
fn a_rate_rule_of_ten_an_hour_lets_ten_through_across_both_replicas() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[[rates]]\nname = \"client-messages\"\nkey = \"client\"\ncount = \"messages\"\n\
         limit = 10\nper = \"1h\"\n{}",
        state(&redis, "")
    );
    let (a, b) = replicas(&config, &backend);
    let (mut on_a, _) = Client::connect_from(a.smtp, ip(31));
    let (mut on_b, _) = Client::connect_from(b.smtp, ip(31));
    assert!(on_a.cmd("EHLO rate.test").starts_with("250"));
    assert!(on_b.cmd("EHLO rate.test").starts_with("250"));
    let mut accepted = 0;
    for i in 0..16 {
        let c = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let r = c.cmd("MAIL FROM:<a@example.org>");
        if r.starts_with("250") {
            accepted += 1;
            assert!(c.cmd("RSET").starts_with("250"));
        } else {
            assert!(
                r.starts_with("450 4.7.1") && r.contains("client-messages"),
                "{r}"
            );
        }
    }
    assert!(
        (9..=11).contains(&accepted),
        "10 (±1) across both, got {accepted}"
    );
    // Another client has its own allowance.
    assert!(rcpt(&b, ip(32), "a@example.org", "b@example.com").starts_with("250"));
    no_key_without_ttl(&redis);
}

/// Opens a session from `from`: the greeting and the client.
fn session(attitude: &Attitude, from: IpAddr) -> (Client, String) {
    Client::connect_from(attitude.smtp, from)
}

fn served_again(attitude: &Attitude, from: IpAddr, within: Duration) -> bool {
    wait_for(within, || {
        let (mut c, greeting) = session(attitude, from);
        let ok = greeting.starts_with("220");
        if ok {
            c.cmd("QUIT");
        }
        ok
    })
}

#[test]
fn a_per_client_session_limit_of_five_holds_across_both_replicas() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[connections.per_client]\nlimit = 5\n{}",
        state(&redis, "refusal_memory = \"200ms\"")
    );
    let (a, b) = replicas(&config, &backend);
    let mut held = Vec::new();
    for i in 0..5 {
        let replica = if i < 3 { &a } else { &b };
        let (c, greeting) = session(replica, ip(33));
        assert!(greeting.starts_with("220"), "session {i}: {greeting}");
        held.push(c);
    }
    for replica in [&a, &b] {
        let (mut c, greeting) = session(replica, ip(33));
        assert!(greeting.starts_with("421 4.7.0"), "the sixth: {greeting}");
        assert!(c.is_closed());
    }
    // Another client is served.
    let (mut other, greeting) = session(&b, ip(34));
    assert!(greeting.starts_with("220"), "{greeting}");
    other.cmd("QUIT");
    // One session on A ends: its lease goes back, and B serves the client again.
    held.remove(0).cmd("QUIT");
    assert!(served_again(&b, ip(33), Duration::from_secs(5)));
    assert!(
        b.metric("attitude_state_operations_total{op=\"acquire\",result=\"ok\"}")
            .unwrap_or(0.0)
            >= 3.0
    );
    no_key_without_ttl(&redis);
}

#[test]
fn a_replica_killed_with_sigkill_leaves_no_stuck_session_count() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[connections.per_client]\nlimit = 3\n{}",
        state(&redis, "lease_ttl = \"2s\"\nrefusal_memory = \"100ms\"")
    );
    let (mut a, b) = replicas(&config, &backend);
    let held: Vec<Client> = (0..3)
        .map(|i| {
            let (c, greeting) = session(&a, ip(35));
            assert!(greeting.starts_with("220"), "session {i}: {greeting}");
            c
        })
        .collect();
    let (_, greeting) = session(&b, ip(35));
    assert!(
        greeting.starts_with("421"),
        "A's sessions count on B: {greeting}"
    );
    a.peer.signal("KILL");
    a.peer.wait_exit(Duration::from_secs(5)).expect("A is gone");
    let killed = Instant::now();
    // A renews no more: its leases expire within lease_ttl, and B serves the client.
    assert!(
        served_again(&b, ip(35), Duration::from_secs(5)),
        "still refused 5 s after the kill"
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "served again after {took:?}"
    );
    drop(held);
    no_key_without_ttl(&redis);
}

#[test]
fn redis_killed_under_load_costs_no_session_and_sharing_resumes_when_it_is_back() {
    let mut redis = RedisServer::start();
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[connections.per_client]\nlimit = 50\n\
         [[rates]]\nname = \"client-messages\"\nkey = \"client\"\ncount = \"messages\"\nlimit = 100000\nper = \"1h\"\n\
         [greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\n{}",
        state(&redis, "breaker_open = \"500ms\"")
    );
    let (a, b) = replicas(&config, &backend);
    // The load: one triplet, passed first, then as many sessions as 5 s allow through A.
    assert!(rcpt(&a, ip(36), "load@example.org", "bob@example.com").starts_with("451"));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(rcpt(&a, ip(36), "load@example.org", "bob@example.com").starts_with("250"));
    let smtp = a.smtp;
    let load = std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        let mut failed = Vec::new();
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(5) && sent < 5000 {
            let t = Instant::now();
            let (mut c, greeting) = Client::connect_from(smtp, ip(36));
            if !greeting.starts_with("220") {
                failed.push(greeting);
                continue;
            }
            c.start_data("load@example.org", &["bob@example.com"]);
            c.send(b"Subject: load\r\n\r\nunder load\r\n.\r\n");
            let r = c.reply();
            if !r.starts_with("250") {
                failed.push(r);
            }
            c.cmd("QUIT");
            slowest = slowest.max(t.elapsed());
            sent += 1;
        }
        (sent, failed, slowest)
    });
    std::thread::sleep(Duration::from_secs(2));
    redis.kill();
    let (sent, failed, slowest) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "sessions failed while Redis went away: {failed:?}"
    );
    assert!(sent > 20, "only {sent} sessions in 6 s");
    assert!(
        slowest < Duration::from_secs(1),
        "a session waited {slowest:?} for Redis"
    );
    assert!(
        wait_for(Duration::from_secs(5), || a
            .metric("attitude_state_degraded")
            == Some(1.0)),
        "{}\n{}",
        a.peer.stderr().join("\n"),
        a.http_get("/metrics")
            .1
            .lines()
            .filter(|l| l.starts_with("attitude_state"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(a.metric("attitude_state_up"), Some(0.0));
    assert!(
        a.metric("attitude_state_operations_total{op=\"acquire\",result=\"open\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    // Degraded, greylisting fails open (the default): a new triplet passes at once.
    assert!(rcpt(&b, ip(37), "new@example.org", "bob@example.com").starts_with("250"));
    // Redis is back (empty): the breakers' probes find it, and both replicas share again.
    redis.restart();
    for replica in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(10), || replica
                .metric("attitude_state_up")
                == Some(1.0)),
            "the probe found Redis again"
        );
    }
    assert_eq!(b.metric("attitude_state_degraded"), Some(0.0));
    let r = rcpt(&a, ip(38), "after@example.org", "bob@example.com");
    assert!(r.starts_with("451"), "A greylists through Redis again: {r}");
    let r = rcpt(&b, ip(38), "after@example.org", "bob@example.com");
    assert!(
        r.starts_with("451") && r.contains("try again in"),
        "B sees A's triplet: {r}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(rcpt(&b, ip(38), "after@example.org", "bob@example.com").starts_with("250"));
    assert!(
        a.peer.stderr().iter().any(|l| l.contains("Redis) is away")),
        "the log says it went"
    );
    assert!(
        a.peer.stderr().iter().any(|l| l.contains("Redis) is back")),
        "and that it came back"
    );
    no_key_without_ttl(&redis);
}

/// `attitude serve` with `config`: what it printed before it exited (it must exit).
fn refused_start(config: &str) -> String {
    let path = scratch_dir("fleet-start").join("attitude.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{config}\n[backend]\nservers = [\"127.0.0.1:9\"]\nhealth = {{ enabled = false }}\n"),
    )
    .unwrap();
    let mut child = Command::new(attitude_bin())
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(Duration::from_secs(10), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited && !out.status.success(),
        "attitude started with {config}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_password_from_a_file_a_wrong_one_refused_at_start_and_tls_with_a_test_ca() {
    let redis = RedisServer::with_password("s3cret-pass");
    let backend = Recorder::start();
    let dir = scratch_dir("fleet-secrets");
    let good = dir.join("password");
    std::fs::write(&good, "s3cret-pass\n").unwrap();
    let config = format!(
        "{OPEN}[greylist]\nenabled = true\n{}",
        state(&redis, &format!("password_file = \"{}\"", good.display()))
    );
    let a = Attitude::start(&config, &[backend.addr]);
    assert!(rcpt(&a, ip(39), "x@example.org", "bob@example.com").starts_with("451"));
    assert!(
        !redis.keys("attitude:").is_empty(),
        "the triplet is in Redis"
    );
    assert_eq!(a.metric("attitude_state_up"), Some(1.0));

    let bad = dir.join("wrong");
    std::fs::write(&bad, "guess").unwrap();
    let error = refused_start(&state(
        &redis,
        &format!("password_file = \"{}\"", bad.display()),
    ));
    assert!(
        error.contains("refused the connection") && error.contains("password"),
        "a clear start-up error: {error}"
    );
    let error = refused_start(&state(
        &redis,
        "password_env = \"ATTITUDE_TEST_NO_SUCH_VAR\"",
    ));
    assert!(error.contains("ATTITUDE_TEST_NO_SUCH_VAR"), "{error}");

    // TLS: Redis with a certificate of the test's own CA.
    let ca = TestCa::new(&dir);
    let (cert, key) = (dir.join("redis.pem"), dir.join("redis.key"));
    ca.issue("redis.test", &cert, &key);
    let tls = RedisServer::with_tls(&cert, &key, &ca.ca_file);
    let config = format!(
        "{OPEN}[greylist]\nenabled = true\n{}",
        state(&tls, &format!("ca_file = \"{}\"", ca.ca_file.display()))
    );
    let t = Attitude::start(&config, &[backend.addr]);
    assert!(rcpt(&t, ip(41), "x@example.org", "bob@example.com").starts_with("451"));
    assert!(
        !tls.keys("attitude:").is_empty(),
        "the triplet went over TLS"
    );
    // Without the CA, the certificate is not trusted: a clear start-up error.
    let error = refused_start(&state(&tls, ""));
    assert!(error.contains("refused the connection"), "{error}");
    no_key_without_ttl(&redis);
    no_key_without_ttl(&tls);
}

#[test]
fn pregreet_verdicts_and_dnsbl_scores_made_on_one_replica_hold_on_the_other() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let dns = attitude_test_support::DnsServer::start(
        "test.",
        &[(
            "2.0.0.127.bl.test.",
            attitude_test_support::Rr::A(Ipv4Addr::new(127, 0, 0, 2)),
        )],
    );
    let config = format!(
        "{OPEN}[dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n\
         [dnsbl]\nenabled = true\nthreshold = 3\nzones = [\"bl.test*3\"]\n\
         [pregreet]\nenabled = true\npause = \"1s\"\n{}",
        dns.addr,
        state(&redis, "")
    );
    let (a, b) = replicas(&config, &backend);
    // DNSBL: scored on A, refused on B without a lookup of B's own.
    let (_, greeting) = session(&a, ip(2));
    assert!(
        greeting.starts_with("554 5.7.1") && greeting.contains("bl.test"),
        "{greeting}"
    );
    // (A tells Redis in the background.)
    assert!(wait_for(Duration::from_secs(2), || !redis
        .keys("attitude:{dnsbl:")
        .is_empty()));
    let (_, greeting) = session(&b, ip(2));
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    let lookups = "attitude_dnsbl_lookups_total{zone=\"bl.test\",result=\"listed\"}";
    assert_eq!(a.metric(lookups), Some(1.0));
    assert_eq!(b.metric(lookups).unwrap_or(0.0), 0.0, "B used A's score");

    // Pregreet: an early talker on A is refused at once on B.
    let mut early = Client::connect_raw_from(a.smtp, ip(12));
    early.send(b"EHLO early.test\r\n");
    let _greeting = early.reply();
    assert!(early.reply().starts_with("554 5.5.1"));
    assert!(wait_for(Duration::from_secs(2), || redis
        .keys("attitude:{pregreet:127.0.0.12}")
        .len()
        == 1));
    let started = Instant::now();
    let (_, greeting) = session(&b, ip(12));
    assert!(greeting.starts_with("554 5.5.1"), "{greeting}");
    assert!(started.elapsed() < Duration::from_millis(500), "at once");
    // A patient client waits once, on A; B greets it at once.
    let (mut c, greeting) = session(&a, ip(13));
    assert!(greeting.starts_with("220"), "{greeting}");
    c.cmd("QUIT");
    assert!(wait_for(Duration::from_secs(2), || redis
        .keys("attitude:{pregreet:127.0.0.13}")
        .len()
        == 1));
    let started = Instant::now();
    let (mut c, greeting) = session(&b, ip(13));
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no second pause: {:?}",
        started.elapsed()
    );
    c.cmd("QUIT");
    no_key_without_ttl(&redis);
}

#[test]
fn the_greylist_file_of_a_lone_replica_is_imported_into_redis_once() {
    let redis = RedisServer::start();
    let backend = Recorder::start();
    let file = scratch_dir("fleet-import").join("greylist.db");
    let greylist = format!(
        "{OPEN}[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\nfile = \"{}\"\n",
        file.display()
    );
    // Alone: a triplet passes, and the file is written at shutdown.
    let mut alone = Attitude::start(&greylist, &[backend.addr]);
    assert!(rcpt(&alone, ip(42), "old@sender.example", "bob@example.com").starts_with("451"));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(rcpt(&alone, ip(42), "old@sender.example", "bob@example.com").starts_with("250"));
    alone.peer.signal("TERM");
    alone
        .peer
        .wait_exit(Duration::from_secs(10))
        .expect("stopped");
    assert!(file.exists());
    // With Redis: imported at start, then renamed; another replica without the file knows it.
    let config = format!("{greylist}{}", state(&redis, ""));
    let a = Attitude::start(&config, &[backend.addr]);
    let imported = file.with_extension("imported");
    assert!(
        wait_for(Duration::from_secs(5), || imported.exists()),
        "renamed once imported"
    );
    assert!(!file.exists());
    let b = Attitude::start(
        &format!("{OPEN}[greylist]\nenabled = true\n{}", state(&redis, "")),
        &[backend.addr],
    );
    let r = rcpt(&b, ip(42), "old@sender.example", "bob@example.com");
    assert!(r.starts_with("250"), "the imported pass holds on B: {r}");
    assert!(rcpt(&a, ip(43), "new@sender.example", "bob@example.com").starts_with("451"));
    no_key_without_ttl(&redis);
}

#[test]
fn with_sentinel_the_master_is_the_one_the_sentinels_name() {
    let master = RedisServer::start();
    let sentinel = RedisServer::sentinel(&master, "mymaster");
    let backend = Recorder::start();
    let config = format!(
        "{OPEN}[greylist]\nenabled = true\n\
         [state]\nredis = \"redis://mymaster/0\"\nsentinels = [\"127.0.0.1:{}\"]\nmaster_name = \"mymaster\"\n",
        sentinel.port
    );
    let a = Attitude::start(&config, &[backend.addr]);
    assert!(rcpt(&a, ip(44), "s@example.org", "bob@example.com").starts_with("451"));
    assert!(
        !master.keys("attitude:{gl:").is_empty(),
        "the triplet is in the master the sentinel named"
    );
    assert_eq!(a.metric("attitude_state_up"), Some(1.0));
    // A master name the sentinels do not know is a start-up error that says so.
    let error = refused_start(&format!(
        "[state]\nredis = \"redis://x/0\"\nsentinels = [\"127.0.0.1:{}\"]\nmaster_name = \"nosuch\"\n",
        sentinel.port
    ));
    assert!(
        error.contains("named no master") && error.contains("nosuch"),
        "{error}"
    );
    no_key_without_ttl(&master);
}

#[test]
fn a_redis_away_at_start_is_not_fatal_and_is_used_once_it_answers() {
    let backend = Recorder::start();
    let port = attitude_test_support::free_port();
    let config = format!(
        "{OPEN}[greylist]\nenabled = true\n\
         [state]\nredis = \"redis://127.0.0.1:{port}\"\nbreaker_open = \"300ms\"\n"
    );
    let a = Attitude::start(&config, &[backend.addr]);
    assert_eq!(
        a.metric("attitude_state_degraded"),
        Some(1.0),
        "degraded from the start"
    );
    // Served meanwhile (greylisting fails open), without a Redis round trip.
    assert!(rcpt(&a, ip(45), "x@example.org", "bob@example.com").starts_with("250"));
    let redis = RedisServer::start_on(port);
    assert!(wait_for(Duration::from_secs(5), || a
        .metric("attitude_state_up")
        == Some(1.0)));
    assert!(rcpt(&a, ip(46), "y@example.org", "bob@example.com").starts_with("451"));
    assert!(!redis.keys("attitude:{gl:").is_empty());
    no_key_without_ttl(&redis);
}
