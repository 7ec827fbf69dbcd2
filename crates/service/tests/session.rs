//! The session core in process: the real driver, protocol layer, relay and pool over
//! `tokio::io::duplex`, against scripted backends (attitude-test-support's `session` harness),
//! with a paused clock: reply order under pipelining, nothing lost (the backend's own reply to
//! end of data), replay on failover, DATA failures before the dot, timeouts and the error limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attitude_service::driver::{DriverConfig, SessionResult};
use attitude_test_support::session::{Backends, Client, Harness, Script, specs};
use tokio::time::Instant;

const A: &str = "198.51.100.1:25";
const B: &str = "198.51.100.2:25";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// A backend connection that takes alice's transaction for bob, up to its 354.
fn up_to_data() -> Script {
    Script::alice_to_bob_up_to_data()
}

/// A backend connection that takes one message from alice to bob.
fn one_message(reply: &str) -> Script {
    up_to_data().content(reply)
}

/// The client side up to the 354 of alice's transaction for bob.
async fn start_data(c: &mut Client) {
    c.start_alice_to_bob().await;
}

#[tokio::test(start_paused = true)]
async fn pipelined_commands_get_their_replies_in_order_and_the_message_its_backend_reply() {
    let backends = Backends::new();
    backends.script(addr(A), one_message("250 2.0.0 queued as 4711"));
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, session) = harness.session();
    assert!(c.reply().await.starts_with("220 attitude.test"));
    // One write: EHLO, MAIL, RCPT, DATA (RFC 2920).
    c.send(b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        .await;
    let ehlo = c.reply().await;
    assert!(
        ehlo.starts_with("250-attitude.test") && ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    // The client dot-stuffs a line that starts with a dot ...
    c.send(b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
        .await;
    // The end-of-data reply is the backend's own: attitude never says 250 for a message.
    assert_eq!(c.reply().await, "250 2.0.0 queued as 4711");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let summary = session.await.unwrap();
    assert_eq!(summary.result, SessionResult::Quit);
    assert_eq!(summary.messages, 1);
    // ... and attitude stuffs it again on the way out.
    assert_eq!(
        backends.messages(addr(A)),
        vec![b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n".to_vec()]
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_refusal_at_end_of_data_reaches_the_client_as_it_is() {
    let backends = Backends::new();
    backends.script(addr(A), one_message("554 5.7.1 spam, go away"));
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _session) = harness.session();
    start_data(&mut c).await;
    c.send(b"Subject: x\r\n\r\nspam\r\n.\r\n").await;
    assert_eq!(c.reply().await, "554 5.7.1 spam, go away");
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_fails_before_data_is_replaced_and_the_transaction_replayed() {
    let backends = Backends::new();
    // A takes MAIL but answers the first RCPT with 421 (closing); B gets MAIL and RCPT again.
    backends.script(
        addr(A),
        Script::smtp(&["PIPELINING"])
            .read("MAIL FROM:<alice@example.org>")
            .expect(
                "RCPT TO:<bob@example.com>",
                "250 2.1.0 ok\r\n421 4.3.2 going down",
            )
            .close(),
    );
    backends.script(addr(B), one_message("250 2.0.0 queued on B"));
    let mut config = attitude_test_support::session::pool_config();
    config.failover_attempts = 1;
    let harness = Harness::with_pool(&backends, &[addr(A)], config);
    let (mut c, _session) = harness.session();
    c.reply().await;
    c.cmd("EHLO client.test").await;
    // MAIL picks A, the only backend; then B joins before the first RCPT.
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250")
    );
    harness
        .pool
        .set_source("static", specs(&[addr(A), addr(B)]));
    let rcpt = c.cmd("RCPT TO:<bob@example.com>").await;
    assert!(
        rcpt.starts_with("250 2.1.5"),
        "the client notices nothing: {rcpt}"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued on B");
    assert_eq!(
        backends.lines(addr(B))[..3],
        [
            "EHLO attitude.test".to_string(),
            "MAIL FROM:<alice@example.org>".to_string(),
            "RCPT TO:<bob@example.com>".to_string()
        ]
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_backend_lost_inside_data_is_a_451_at_the_final_dot_never_a_250() {
    let backends = Backends::new();
    backends.script(addr(A), up_to_data().close());
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _session) = harness.session();
    start_data(&mut c).await;
    let body = "x".repeat(900) + "\r\n";
    for _ in 0..200 {
        c.send(body.as_bytes()).await;
    }
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("451 4.4.2"), "{reply}");
    // The session goes on.
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test(start_paused = true)]
async fn no_backend_at_mail_is_a_451_and_the_session_goes_on() {
    let backends = Backends::new();
    // Nothing scripted: every connection is refused.
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _session) = harness.session();
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let reply = c.cmd("MAIL FROM:<alice@example.org>").await;
    assert!(reply.starts_with("451 4.4.1"), "{reply}");
    assert!(c.cmd("QUIT").await.starts_with("221"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_the_command_timeout_without_waiting_for_it() {
    let backends = Backends::new();
    let mut harness = Harness::new(&backends, &[addr(A)]);
    harness.driver = Arc::new(DriverConfig {
        command_timeout: Duration::from_secs(300),
        ..(*harness.driver).clone()
    });
    let (mut c, session) = harness.session();
    let started = Instant::now();
    c.reply().await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(started.elapsed() >= Duration::from_secs(300));
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_drips_a_command_is_closed_at_the_deadline() {
    let backends = Backends::new();
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, session) = harness.session();
    c.reply().await;
    let started = Instant::now();
    // A byte every 10 s never completes a command within 300 s.
    c.drip(
        b"EHLO a-very-slow-client.example.org",
        Duration::from_secs(10),
    )
    .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(320));
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);
}

#[tokio::test(start_paused = true)]
async fn too_many_errors_close_the_session_with_421() {
    let backends = Backends::new();
    let mut harness = Harness::new(&backends, &[addr(A)]);
    harness.driver = Arc::new(DriverConfig {
        max_errors: 3,
        ..(*harness.driver).clone()
    });
    let (mut c, session) = harness.session();
    c.reply().await;
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    let last = c.reply().await;
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(c.closed(Duration::from_secs(1)).await);
    assert_eq!(session.await.unwrap().result, SessionResult::TooManyErrors);
}

#[tokio::test(start_paused = true)]
async fn junk_commands_past_the_limit_close_the_session() {
    let backends = Backends::new();
    let mut harness = Harness::new(&backends, &[addr(A)]);
    harness.driver = Arc::new(DriverConfig {
        junk_command_limit: 4,
        ..(*harness.driver).clone()
    });
    let (mut c, session) = harness.session();
    c.reply().await;
    // The first EHLO is not junk; a second one is, as NOOP, RSET, HELP and VRFY are.
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c.cmd("EHLO again.test").await.starts_with("250"));
    assert!(c.cmd("VRFY someone").await.starts_with("252"));
    let closing = c.cmd("HELP").await;
    assert!(closing.starts_with("421 4.7.0"), "{closing}");
    assert!(c.closed(Duration::from_secs(1)).await);
    assert_eq!(session.await.unwrap().result, SessionResult::JunkCommands);
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_an_idle_session_with_421_and_lets_a_transaction_finish() {
    let backends = Backends::new();
    backends.script(addr(A), one_message("250 2.0.0 queued"));
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut idle, idle_session) = harness.session();
    let (mut busy, _busy_session) = harness.session();
    idle.reply().await;
    busy.reply().await;
    idle.cmd("EHLO idle.test").await;
    busy.cmd("EHLO busy.test").await;
    busy.cmd("MAIL FROM:<alice@example.org>").await;
    harness.shutdown.drain.cancel();
    let reply = idle.reply().await;
    assert!(reply.starts_with("421 4.3.2"), "{reply}");
    assert_eq!(idle_session.await.unwrap().result, SessionResult::Shutdown);
    // The transaction in flight finishes.
    assert!(
        busy.cmd("RCPT TO:<bob@example.com>")
            .await
            .starts_with("250")
    );
    assert!(busy.cmd("DATA").await.starts_with("354"));
    busy.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(busy.reply().await, "250 2.0.0 queued");
}

/// A driver that offers STARTTLS, with a certificate of a test CA.
fn with_starttls(harness: &mut Harness, name: &str) {
    let dir = attitude_test_support::scratch_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = attitude_test_support::TestCa::new(&dir);
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    ca.issue("attitude.test", &cert, &key);
    let tls = attitude_edge::tls::ServerTls::load(&cert, &key, Duration::from_secs(10)).unwrap();
    harness.driver = Arc::new(DriverConfig {
        tls: Some(Arc::new(tls)),
        ..(*harness.driver).clone()
    });
}

#[tokio::test(start_paused = true)]
async fn commands_pipelined_behind_starttls_are_never_run() {
    let backends = Backends::new();
    let mut harness = Harness::new(&backends, &[addr(A)]);
    with_starttls(&mut harness, "session-starttls-injection");
    let (mut c, session) = harness.session();
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    // CVE-2011-0411: bytes in the same read as STARTTLS would run inside TLS.
    c.send(b"STARTTLS\r\nMAIL FROM:<alice@example.org>\r\n")
        .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("554 5.5.1"), "{reply}");
    assert!(c.closed(Duration::from_secs(1)).await);
    assert_eq!(session.await.unwrap().result, SessionResult::Policy);
    assert_eq!(backends.dials(addr(A)), 0, "MAIL never reached a backend");
}

#[tokio::test(start_paused = true)]
async fn data_below_the_minimum_rate_is_closed_and_never_delivered() {
    let backends = Backends::new();
    backends.script(addr(A), up_to_data().hold());
    let harness = Harness::new(&backends, &[addr(A)]);
    let (data_timeout, rate) = (harness.driver.data_timeout, harness.driver.min_data_rate);
    assert!(rate > 0);
    let (mut c, session) = harness.session();
    start_data(&mut c).await;
    let started = Instant::now();
    // A byte every 10 s: far below the rate, yet never silent for `data_timeout`.
    while c.try_send(b"x").await {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if started.elapsed() > data_timeout * 2 {
            break;
        }
    }
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    let took = started.elapsed();
    assert!(
        took >= data_timeout && took < data_timeout + Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);
    assert!(backends.messages(addr(A)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_throttled_upload_takes_its_size_over_the_rate_and_nothing_is_refused() {
    use attitude_layers::throttle::ThrottleLayer;
    use attitude_service::{BoxCommand, Event, Request};
    use tower::Layer;

    let backends = Backends::new();
    backends.script(addr(A), one_message("250 2.0.0 queued"));
    let mut harness = Harness::new(&backends, &[addr(A)]);
    // 512 KiB/s per session after a 64 KiB burst, as `[throttle]` builds it.
    let layer = ThrottleLayer::new(
        512 * 1024,
        0,
        64 * 1024,
        |_: &Request| None::<()>,
        |req: &Request| match &req.event {
            Event::DataChunk(chunk) => chunk.len() as u32,
            _ => 0,
        },
    );
    harness.policies = Some(Arc::new(move |inner| BoxCommand::new(layer.layer(inner))));
    let (mut c, _session) = harness.session();
    start_data(&mut c).await;
    let started = Instant::now();
    let line = [b'q'; 510];
    for _ in 0..2048 {
        c.send(&line).await;
        c.send(b"\r\n").await;
    }
    c.send(b".\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    // 1 MiB at 512 KiB/s after a 64 KiB burst: 1.875 s, on the paused clock.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_millis(1950),
        "1 MiB took {took:?}"
    );
    assert_eq!(backends.messages(addr(A))[0].len(), 1024 * 1024);
}

#[tokio::test(start_paused = true)]
async fn the_reverse_path_reaches_the_backend_as_the_client_wrote_it() {
    let backends = Backends::new();
    for sender in ["postmaster", ""] {
        backends.script(
            addr(A),
            Script::smtp(&["PIPELINING"])
                .read(&format!("MAIL FROM:<{sender}>"))
                .expect("RCPT TO:<bob@example.com>", "250 2.1.0 ok\r\n250 2.1.5 ok"),
        );
    }
    let mut config = attitude_test_support::session::pool_config();
    config.reuse = false;
    let harness = Harness::with_pool(&backends, &[addr(A)], config);
    for sender in ["postmaster", ""] {
        let (mut c, _session) = harness.session();
        c.reply().await;
        c.cmd("EHLO client.test").await;
        assert!(
            c.cmd(&format!("MAIL FROM:<{sender}>"))
                .await
                .starts_with("250")
        );
        assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
        c.cmd("QUIT").await;
    }
    let mails: Vec<String> = backends
        .lines(addr(A))
        .into_iter()
        .filter(|l| l.starts_with("MAIL"))
        .collect();
    assert_eq!(mails, ["MAIL FROM:<postmaster>", "MAIL FROM:<>"]);
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn an_over_long_auth_answer_cancels_the_exchange_at_the_backend_too() {
    use attitude_service::auth::AuthOffer;

    let backends = Backends::new();
    backends.script(
        addr(A),
        Script::smtp(&["PIPELINING", "AUTH PLAIN LOGIN"])
            .expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
            .expect("*", "501 5.7.0 exchange cancelled"),
    );
    let mut harness = Harness::new(&backends, &[addr(A)]);
    let offer = AuthOffer::new(vec!["PLAIN".into(), "LOGIN".into()], true);
    offer.set_backend(vec!["PLAIN".into(), "LOGIN".into()]);
    harness.protocol.auth = Some(Arc::new(offer));
    let (mut c, _session) = harness.session();
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.contains("AUTH PLAIN LOGIN"));
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    let reply = c.cmd(&"A".repeat(20_000)).await;
    assert!(reply.starts_with("501 5.5.2"), "{reply}");
    // The next line is a command again, answered by attitude's protocol layer.
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert_eq!(
        backends.lines(addr(A)),
        ["EHLO attitude.test", "AUTH LOGIN", "*"]
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_reply_before_the_final_dot_is_never_the_verdict_nor_anyone_elses_answer() {
    let backends = Backends::new();
    // The backend answers 250 right after its 354, before the message, and would answer 451
    // after the final dot: the early 250 must not become the client's verdict, and the 451
    // must not stay on a pooled connection for the next session.
    backends.script(
        addr(A),
        up_to_data()
            .send("250 2.0.0 early, before the message")
            .content("451 4.3.0 the real verdict"),
    );
    backends.script(
        addr(A),
        one_message("250 2.0.0 queued on a fresh connection"),
    );
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _session) = harness.session();
    start_data(&mut c).await;
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(
        reply.starts_with("451 4.4."),
        "never the early 250: {reply}"
    );
    // The next session gets a connection of its own and its own replies.
    let (mut next, _session) = harness.session();
    start_data(&mut next).await;
    next.send(b"Subject: y\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(next.reply().await, "250 2.0.0 queued on a fresh connection");
    assert_eq!(backends.dials(addr(A)), 2);
    assert_eq!(
        backends.messages(addr(A)).len(),
        1,
        "the first never got its dot"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_split_across_writes_is_read_whole() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        up_to_data()
            .content("250-2.0.0 queued")
            .pause(Duration::from_secs(1))
            .send("250 2.0.0 as 4711"),
    );
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _session) = harness.session();
    start_data(&mut c).await;
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250-2.0.0 queued\n250 2.0.0 as 4711");
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test(start_paused = true)]
async fn bytes_a_backend_sends_while_idle_in_the_pool_never_reach_the_next_session() {
    let backends = Backends::new();
    // After its verdict the backend says something unasked (an idle timeout, say) while the
    // connection waits in the pool: that connection is not handed out again.
    backends.script(
        addr(A),
        one_message("250 2.0.0 queued").send("421 4.4.2 idle too long, closing"),
    );
    backends.script(
        addr(A),
        one_message("250 2.0.0 queued on a fresh connection"),
    );
    let harness = Harness::new(&backends, &[addr(A)]);
    let (mut c, _first) = harness.session();
    start_data(&mut c).await;
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut next, _second) = harness.session();
    start_data(&mut next).await;
    next.send(b"Subject: y\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(next.reply().await, "250 2.0.0 queued on a fresh connection");
    assert_eq!(backends.dials(addr(A)), 2);
}
