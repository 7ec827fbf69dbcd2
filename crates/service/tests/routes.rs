//! Routes in process: the first accepted recipient fixes a transaction's pool, a recipient
//! routed to another pool gets 452 4.5.3 (and goes in the next transaction), an unrouted
//! domain gets 550 5.1.2 when so routed, a route's size limit, and a pool that is down
//! (scripted backends, paused clock).

use std::net::SocketAddr;
use std::sync::Arc;

use attitude_codec::RcptTo;
use attitude_service::relay::{Route, Router};
use attitude_test_support::session::{Backends, Client, Harness, Script};

const DEFAULT: &str = "198.51.100.1:25";
const A: &str = "198.51.100.2:25";
const B: &str = "198.51.100.3:25";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// `a.example` to pool 1, `b.example` to pool 2 (100 octets at most), `nowhere.example`
/// unknown, the rest to the default pool.
#[derive(Debug)]
struct ByDomain;

impl Router for ByDomain {
    fn route(&self, rcpt: &RcptTo) -> Route {
        let pool = |pool, max_message_size| Route::Pool {
            pool,
            max_message_size,
        };
        match rcpt.address.rsplit_once('@').map(|(_, d)| d) {
            Some("a.example") => pool(1, None),
            Some("b.example") => pool(2, Some(100)),
            Some("nowhere.example") => Route::Unknown,
            _ => pool(0, None),
        }
    }
}

/// A harness whose default pool is `DEFAULT`, pool 1 `a`, pool 2 `b`.
fn harness(backends: &Backends, b: &[SocketAddr]) -> Harness {
    let mut harness = Harness::new(backends, &[addr(DEFAULT)]);
    harness.route(backends, &[("a", &[addr(A)]), ("b", b)], Arc::new(ByDomain));
    harness
}

fn backend() -> Script {
    Script::smtp(&["PIPELINING", "8BITMIME", "SIZE 10000000"])
}

/// A backend connection that takes alice's transaction for `rcpt` (MAIL and RCPT pipelined).
fn takes(rcpt: &str) -> Script {
    backend()
        .read("MAIL FROM:<alice@example.org>")
        .expect(&format!("RCPT TO:<{rcpt}>"), "250 2.1.0 ok\r\n250 2.1.5 ok")
}

/// The greeting, EHLO and alice's MAIL.
async fn open(c: &mut Client) {
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250")
    );
}

/// DATA and a message with `body`: the reply to its end.
async fn send(c: &mut Client, body: &str) -> String {
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.cmd(&format!("Subject: x\r\n\r\n{body}\r\n.")).await
}

#[tokio::test(start_paused = true)]
async fn the_first_recipient_fixes_the_pool_and_the_others_wait_for_the_next_transaction() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        takes("x@a.example")
            .expect("RCPT TO:<y@a.example>", "250 2.1.5 ok")
            .message("250 2.0.0 queued on a"),
    );
    backends.script(
        addr(B),
        takes("z@b.example").message("250 2.0.0 queued on b"),
    );
    let harness = harness(&backends, &[addr(B)]);
    let (mut c, _session) = harness.session();
    open(&mut c).await;
    assert!(c.cmd("RCPT TO:<x@a.example>").await.starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<z@b.example>").await,
        "452 4.5.3 Too many recipients for this transaction: send this one in another"
    );
    assert!(c.cmd("RCPT TO:<y@a.example>").await.starts_with("250"));
    assert_eq!(send(&mut c, "for a").await, "250 2.0.0 queued on a");
    // The deferred recipient, in the next transaction: on its own pool.
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<z@b.example>").await.starts_with("250"));
    assert_eq!(send(&mut c, "for b").await, "250 2.0.0 queued on b");
    assert_eq!(backends.messages(addr(A)).len(), 1);
    assert_eq!(backends.messages(addr(B)).len(), 1);
    assert_eq!(
        backends.dials(addr(DEFAULT)),
        0,
        "no mail for the default pool"
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_refused_first_recipient_fixes_nothing() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        backend()
            .read("MAIL FROM:<alice@example.org>")
            .expect(
                "RCPT TO:<gone@a.example>",
                "250 2.1.0 ok\r\n550 5.1.1 no such user",
            )
            .expect("RSET", "250 2.0.0 ok"),
    );
    backends.script(
        addr(DEFAULT),
        takes("bob@example.com").message("250 2.0.0 queued on default"),
    );
    let harness = harness(&backends, &[addr(B)]);
    let (mut c, _session) = harness.session();
    open(&mut c).await;
    assert_eq!(
        c.cmd("RCPT TO:<gone@a.example>").await,
        "550 5.1.1 no such user"
    );
    // No recipient was accepted: this one opens the transaction on its own pool.
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
    assert_eq!(send(&mut c, "hi").await, "250 2.0.0 queued on default");
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn an_unknown_domain_is_refused_and_the_transaction_goes_on() {
    let backends = Backends::new();
    backends.script(addr(A), takes("x@a.example").message("250 2.0.0 queued"));
    let harness = harness(&backends, &[addr(B)]);
    let (mut c, _session) = harness.session();
    open(&mut c).await;
    assert_eq!(
        c.cmd("RCPT TO:<x@nowhere.example>").await,
        "550 5.1.2 Recipient domain not served here"
    );
    assert!(c.cmd("RCPT TO:<x@a.example>").await.starts_with("250"));
    assert_eq!(send(&mut c, "hi").await, "250 2.0.0 queued");
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_route_size_limit_refuses_at_rcpt_or_before_the_final_dot() {
    let backends = Backends::new();
    // The backend reads MAIL, RCPT, DATA and content, and never a final dot: the message is
    // refused by closing the connection before it.
    backends.script(
        addr(B),
        takes("z@b.example").expect("DATA", "354 go ahead").hold(),
    );
    let harness = harness(&backends, &[addr(B)]);
    let (mut c, _session) = harness.session();
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@example.org> SIZE=1000")
            .await
            .starts_with("250")
    );
    assert_eq!(
        c.cmd("RCPT TO:<z@b.example>").await,
        "552 5.3.4 Message size exceeds fixed limit of 100 octets"
    );
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<z@b.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let body = "x".repeat(200);
    assert_eq!(
        c.cmd(&format!("Subject: big\r\n\r\n{body}\r\n.")).await,
        "552 5.3.4 Message size exceeds fixed limit of 100 octets"
    );
    assert!(
        backends.messages(addr(B)).is_empty(),
        "no final dot reached pool b"
    );
    // The session goes on.
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_is_down_defers_its_domains_and_the_others_are_served() {
    let backends = Backends::new();
    backends.script(addr(A), takes("x@a.example").message("250 2.0.0 queued"));
    // Pool b has no backend at all.
    let harness = harness(&backends, &[]);
    let (mut c, _session) = harness.session();
    open(&mut c).await;
    let down = c.cmd("RCPT TO:<z@b.example>").await;
    assert!(down.starts_with("451 4.4.1"), "{down}");
    assert!(c.cmd("RCPT TO:<x@a.example>").await.starts_with("250"));
    assert_eq!(send(&mut c, "hi").await, "250 2.0.0 queued");
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn ehlo_offers_what_every_pool_offers() {
    let backends = Backends::new();
    let utf8 = || Script::smtp(&["PIPELINING", "8BITMIME", "SMTPUTF8", "DSN"]);
    backends.script(addr(DEFAULT), utf8());
    backends.script(addr(A), utf8());
    backends.script(addr(B), Script::smtp(&["PIPELINING", "8BITMIME", "DSN"]));
    let harness = harness(&backends, &[addr(B)]);
    harness.learn(&[addr(DEFAULT)]).await;
    let (pools, _) = harness.routed.as_ref().unwrap();
    Harness::learn_in(&pools[0], &[addr(A)]).await;
    Harness::learn_in(&pools[1], &[addr(B)]).await;
    let (mut c, _session) = harness.session();
    assert!(c.reply().await.starts_with("220"));
    let ehlo = c.cmd("EHLO client.test").await;
    // Pool b lacks SMTPUTF8: no client of this listener is offered it.
    assert!(ehlo.contains("DSN") && !ehlo.contains("SMTPUTF8"), "{ehlo}");
    assert!(
        c.cmd("MAIL FROM:<jö@example.org> SMTPUTF8")
            .await
            .starts_with("555 5.6.7")
    );
}
