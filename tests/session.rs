//! Session behaviour: sequencing, pipelining, limits, timeouts, drain, metrics, configuration.

use std::process::Command;
use std::time::Duration;

use attitude_test_support::{Attitude, Client, Recorder, attitude_bin, scratch_dir, wait_for};

#[test]
fn sequencing_and_local_replies() {
    let recorder = Recorder::start();
    // Many refused commands in one session: no tarpit here, that has its own test.
    let attitude = Attitude::start("[tarpit]\nsoft_error_limit = 0\n", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("503 5.5.1"), "MAIL before EHLO: {r}");
    let ehlo = c.cmd("EHLO client.test");
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(cap), "EHLO lacks {cap}: {ehlo}");
    }
    // What the backend (aiosmtpd: 8BITMIME, SMTPUTF8) offers, nothing it lacks, and
    // attitude's own CHUNKING (BDAT goes on as DATA).
    assert!(
        ehlo.contains("SMTPUTF8") && ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("DSN") && !ehlo.contains("BINARYMIME"),
        "{ehlo}"
    );
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").starts_with("503 5.5.1"));
    assert!(c.cmd("VRFY postmaster").starts_with("252"));
    assert!(c.cmd("NOOP").starts_with("250 2.0.0"));
    assert!(c.cmd("HELP").starts_with("214"));
    assert!(c.cmd("EXPN staff").starts_with("502 5.5.1"));
    // BDAT outside a transaction is refused, and its chunk is read, never run.
    assert!(c.cmd("BDAT 10 LAST\r\nSTARTTLS").starts_with("503 5.5.1"));
    assert!(c.cmd("STARTTLS").starts_with("502 5.5.1"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").starts_with("554 5.5.1"));
    assert!(c.cmd("RSET").starts_with("250 2.0.0"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("503"));
    // Every reply after the greeting carries an enhanced status code (RFC 2034), 354 aside.
    let r = c.cmd("QUIT");
    assert!(r.starts_with("221 2.0.0"), "{r}");
    assert!(c.is_closed());
}

#[test]
fn pipelined_group_gets_replies_in_order() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<reject1@example.com>\r\n\
          RCPT TO:<ok1@example.com>\r\nRCPT TO:<tempfail@example.com>\r\nRCPT TO:<ok2@example.com>\r\nDATA\r\n",
    );
    let replies: Vec<String> = (0..7).map(|_| c.reply()).collect();
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        codes,
        ["250", "250", "550", "250", "451", "250", "354"],
        "{replies:?}"
    );
    c.send(b"Subject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("221"));
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].rcpt_tos, ["ok1@example.com", "ok2@example.com"]);
}

#[test]
fn too_many_errors_disconnects_with_421() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("[limits]\nmax_errors = 3\n", &[recorder.addr]);
    let mut c = Client::connect(attitude.smtp);
    assert!(c.cmd("FOO").starts_with("500"));
    assert!(c.cmd("BAR").starts_with("500"));
    let r = c.cmd("BAZ");
    assert!(r.starts_with("500"), "{r}");
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.is_closed());
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let recorder = Recorder::start();
    let mut attitude = Attitude::start(
        "[timeouts]\ndrain_grace = \"20s\"\ndrain_delay = \"0s\"\n",
        &[recorder.addr],
    );
    assert_eq!(attitude.http_get("/readyz").0, 200);
    let mut busy = Client::connect(attitude.smtp);
    busy.start_data("a@example.org", &["b@example.com"]);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let mut idle = Client::connect(attitude.smtp);
    assert!(idle.cmd("EHLO idle.test").starts_with("250"));

    attitude.peer.signal("TERM");
    // Readiness goes at once; the idle session is told to go away.
    assert!(wait_for(Duration::from_secs(5), || attitude
        .http_get("/readyz")
        .0
        == 503));
    let r = idle.reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");

    busy.send(b"second half\r\n.\r\n");
    let r = busy.reply();
    assert!(r.starts_with("250"), "in-flight message: {r}");
    // After the transaction the session is closed with 421 at once.
    let r = busy.try_reply().unwrap_or_default();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    let status = attitude.peer.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert!(String::from_utf8_lossy(&m[0].content).ends_with("first half\r\nsecond half\r\n"));
}

#[test]
fn during_the_drain_delay_new_clients_get_421_then_the_listener_closes() {
    let recorder = Recorder::start();
    let mut attitude = Attitude::start(
        "[timeouts]\ndrain_grace = \"10s\"\ndrain_delay = \"2s\"\n",
        &[recorder.addr],
    );
    let started = std::time::Instant::now();
    attitude.peer.signal("TERM");
    assert!(wait_for(Duration::from_secs(5), || attitude
        .http_get("/readyz")
        .0
        == 503));
    // The load balancer still sends a few: they are told to go elsewhere, not reset.
    let mut late = Client::connect_raw(attitude.smtp);
    let r = late.reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(late.is_closed());
    // After the delay the listener is gone and the process exits.
    let status = attitude.peer.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(attitude.smtp).is_err());
}

#[test]
fn drain_grace_over_closes_sessions_with_421() {
    let recorder = Recorder::start();
    let mut attitude = Attitude::start(
        "[timeouts]\ndrain_grace = \"1s\"\ndrain_delay = \"0s\"\n",
        &[recorder.addr],
    );
    let mut busy = Client::connect(attitude.smtp);
    busy.start_data("a@example.org", &["b@example.com"]);
    busy.send(b"Subject: too slow\r\n\r\n");
    attitude.peer.signal("TERM");
    let r = busy.reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(attitude.peer.wait_exit(Duration::from_secs(10)).is_some());
    assert!(recorder.messages().is_empty());
}

#[test]
fn metrics_health_and_session_log() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    assert_eq!(attitude.http_get("/healthz"), (200, "ok\n".into()));
    assert_eq!(attitude.http_get("/nope").0, 404);
    let mut c = Client::connect(attitude.smtp);
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: m\r\n\r\nmetrics\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    assert!(c.is_closed());
    assert!(wait_for(Duration::from_secs(5), || {
        attitude.metric("attitude_sessions_ended_total{result=\"quit\"}") == Some(1.0)
    }));
    let (status, body) = attitude.http_get("/metrics");
    assert_eq!(status, 200);
    for sample in [
        "attitude_sessions_total 1",
        "attitude_sessions_active 0",
        "attitude_commands_total{verb=\"MAIL\",class=\"2xx\"} 1",
        "attitude_commands_total{verb=\"DATA\",class=\"3xx\"} 1",
        "attitude_messages_total{outcome=\"accepted\"} 1",
        "result=\"miss\"} 1",
        "attitude_backend_up{pool=\"default\",backend=",
        "attitude_transaction_duration_seconds_bucket{le=\"+Inf\"} 1",
    ] {
        assert!(body.contains(sample), "missing {sample} in\n{body}");
    }
    assert!(body.contains("attitude_client_bytes_received_total"));
    assert!(wait_for(Duration::from_secs(5), || {
        attitude.peer.stderr().iter().any(|l| {
            l.contains("session end") && l.contains("messages=1") && l.contains("result=\"quit\"")
        })
    }));
}

#[test]
fn check_config_prints_effective_config_and_names_errors() {
    let dir = scratch_dir("config");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "hostname = \"mx.example\"\n[backend]\nservers = [\"127.0.0.1:25\"]\n[timeouts]\ncommand = \"2m\"\n",
    )
    .unwrap();
    let out = Command::new(attitude_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("hostname = \"mx.example\""), "{printed}");
    assert!(printed.contains("command = \"120s\""), "{printed}");
    assert!(printed.contains("max_message_size = 26214400"), "{printed}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "hostname = \"mx\"\n\n[limits]\nmax_mesage_size = 10\n",
    )
    .unwrap();
    let out = Command::new(attitude_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:1") && err.contains("max_mesage_size"),
        "{err}"
    );

    // Flags and environment variables override the file; a missing backend says what to do.
    let out = Command::new(attitude_bin())
        .arg("serve")
        .env_remove("ATTITUDE_BACKEND")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend"), "{err}");
}

#[test]
fn flags_and_environment_override_the_file() {
    let recorder = Recorder::start();
    let dir = scratch_dir("flags");
    let file = dir.join("attitude.toml");
    // The file points at a dead backend and a fixed port; flags and env replace both.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[backend]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let mut cmd = Command::new(attitude_bin());
    cmd.args(["serve", "--config"])
        .arg(&file)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--hostname",
            "flags.test",
        ])
        .env("ATTITUDE_BACKEND", recorder.addr.to_string());
    let (_peer, pairs) = attitude_test_support::Peer::spawn_announced("attitude", cmd);
    let smtp = attitude_test_support::addr_of(&pairs, "smtp").unwrap();
    let mut c = Client::connect_raw(smtp);
    let greeting = c.reply();
    assert!(greeting.contains("flags.test"), "{greeting}");
    c.start_data("a@example.org", &["b@example.com"]);
    c.send(b"Subject: env\r\n\r\nenv\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
}

#[test]
fn sigterm_with_twenty_transactions_in_flight_loses_nothing() {
    let recorder = Recorder::start();
    let mut attitude = Attitude::start(
        "[timeouts]\ndrain_grace = \"15s\"\ndrain_delay = \"1s\"\n",
        &[recorder.addr],
    );
    let mut busy: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::connect(attitude.smtp);
            c.start_data("a@example.org", &["b@example.com"]);
            c.send(format!("Subject: in flight {i}\r\n\r\nfirst half\r\n").as_bytes());
            c
        })
        .collect();
    let started = std::time::Instant::now();
    attitude.peer.signal("TERM");
    assert!(wait_for(Duration::from_secs(5), || attitude
        .http_get("/readyz")
        .0
        == 503));
    // New clients are told to go elsewhere while the drain delay lasts.
    let mut late = Client::connect_raw(attitude.smtp);
    assert!(late.reply().starts_with("421 4.3.2"));
    for (i, c) in busy.iter_mut().enumerate() {
        c.send(b"second half\r\n.\r\n");
        let r = c.reply();
        assert!(r.starts_with("250"), "transaction {i}: {r}");
    }
    let status = attitude.peer.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "within the grace period"
    );
    let m = recorder.messages();
    assert_eq!(m.len(), 20, "every accepted message reached the backend");
}
