//! Poll-level tests of the protocol layer with `tower-test`: what it answers itself, what it
//! passes inward, and how it rewrites the inner service's replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use attitude_codec::{Command, CommandError, MailFrom, RcptTo, Reply};
use attitude_service::protocol::{ProtocolConfig, ProtocolLayer};
use attitude_service::{DataOutcome, EnhancedStatus, Event, Helo, Request, Session, Transaction};
use bytes::Bytes;
use tokio_test::{assert_pending, assert_ready_ok};
use tower_test::mock;

fn session() -> Session {
    let addr: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    Session::new(1, addr, "127.0.0.1:25".parse().unwrap())
}

fn greeted() -> Session {
    let mut s = session();
    s.helo = Some(Helo {
        name: "client.test".into(),
        extended: true,
    });
    s
}

fn in_transaction(rcpts: &[&str], data_bytes: u64) -> Session {
    let mut s = greeted();
    s.transaction = Some(Box::new(Transaction {
        mail: MailFrom {
            address: "a@example.org".into(),
            ..MailFrom::default()
        },
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        started: Instant::now(),
        data_bytes,
        bdat: false,
    }));
    s
}

fn req(session: Session, event: Event) -> Request {
    Request {
        session: Arc::new(session),
        event,
    }
}

fn config() -> ProtocolConfig {
    ProtocolConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 2,
        ..ProtocolConfig::default()
    }
}

fn ok() -> Reply {
    Reply::new(250, EnhancedStatus::new(2, 0, 0), "inner")
}

#[tokio::test]
async fn local_answers_never_reach_the_inner_service() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Reply, _>(ProtocolLayer::new(config()));
    handle.allow(0);
    // Readiness follows the inner service.
    assert_pending!(service.poll_ready());
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());

    let cases = [
        (
            req(
                session(),
                Event::Command(Command::Mail(MailFrom::default())),
            ),
            503,
        ),
        (
            req(greeted(), Event::Command(Command::Rcpt(RcptTo::default()))),
            503,
        ),
        (req(greeted(), Event::Command(Command::Data)), 503),
        (
            req(in_transaction(&[], 0), Event::Command(Command::Data)),
            554,
        ),
        (
            req(
                in_transaction(&[], 0),
                Event::Command(Command::Mail(MailFrom::default())),
            ),
            503,
        ),
        (
            req(
                in_transaction(&["x", "y"], 0),
                Event::Command(Command::Rcpt(RcptTo::new("z@e"))),
            ),
            452,
        ),
        (
            req(
                in_transaction(&[], 0),
                Event::Command(Command::Rcpt(RcptTo::new("ü@e"))),
            ),
            553,
        ),
        (
            req(
                greeted(),
                Event::Command(Command::Mail(MailFrom {
                    address: "a@b".into(),
                    size: std::num::NonZeroU64::new(5000),
                    ..MailFrom::default()
                })),
            ),
            552,
        ),
        (req(greeted(), Event::Command(Command::Noop)), 250),
        (
            req(greeted(), Event::Command(Command::Vrfy("x".into()))),
            252,
        ),
        (req(greeted(), Event::Command(Command::StartTls)), 502),
        (
            req(
                greeted(),
                Event::Command(Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: None,
                }),
            ),
            502,
        ),
        (req(greeted(), Event::Invalid(CommandError::Unknown)), 500),
        (
            req(greeted(), Event::AuthLine(Bytes::from_static(b"x"))),
            503,
        ),
        (
            req(
                in_transaction(&["x"], 1001),
                Event::DataChunk(Bytes::from_static(b"a\r\n")),
            ),
            552,
        ),
    ];
    for (request, code) in cases {
        let label = request.event.label();
        assert_ready_ok!(service.poll_ready());
        let reply = service.call(request).await.unwrap();
        assert_eq!(reply.code(), code, "{label}: {reply}");
        assert!(
            reply.status().is_some(),
            "{label}: every reply has an enhanced status code"
        );
    }
    // Nothing was forwarded.
    assert!(handle.poll_request().is_pending());
}

#[tokio::test]
async fn ehlo_is_forwarded_and_answered_with_capabilities() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Reply, _>(ProtocolLayer::new(config()));
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        session(),
        Event::Command(Command::Ehlo("c.test".into())),
    ));
    let (inner_req, respond) = handle.next_request().await.unwrap();
    assert!(matches!(inner_req.event, Event::Command(Command::Ehlo(_))));
    respond.send_response(ok());
    let reply = fut.await.unwrap();
    assert_eq!(reply.code(), 250);
    let lines = reply.lines().join("\n");
    assert!(lines.starts_with("mx.test"));
    for cap in ["PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES"] {
        assert!(lines.contains(cap), "{lines}");
    }
    // Until a backend's EHLO was seen, attitude offers only its own extensions.
    assert!(!lines.contains("8BITMIME"), "{lines}");

    // An inner refusal of EHLO (a HELO policy, later) is passed on as it is.
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        session(),
        Event::Command(Command::Ehlo("bad.test".into())),
    ));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(Reply::new(550, EnhancedStatus::new(5, 7, 1), "no"));
    assert_eq!(fut.await.unwrap().code(), 550);
}

#[tokio::test]
async fn envelope_and_failed_data_go_inward_and_a_failure_is_never_a_250() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Reply, _>(ProtocolLayer::new(config()));
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        greeted(),
        Event::Command(Command::Mail(MailFrom::default())),
    ));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(Reply::new(
        451,
        EnhancedStatus::new(4, 4, 1),
        "backend down",
    ));
    assert_eq!(fut.await.unwrap().code(), 451);

    // A failed message: even if an inner service said 250, the client gets the failure.
    let failure = Reply::new(550, EnhancedStatus::new(5, 6, 0), "bare LF");
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        in_transaction(&["x"], 10),
        Event::DataEnd(DataOutcome::Failed(failure.clone())),
    ));
    let (inner_req, respond) = handle.next_request().await.unwrap();
    assert!(matches!(
        inner_req.event,
        Event::DataEnd(DataOutcome::Failed(_))
    ));
    respond.send_response(ok());
    assert_eq!(fut.await.unwrap(), failure);

    // Inner errors come out as errors (the driver maps them to replies in one place).
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        in_transaction(&["x"], 0),
        Event::Command(Command::Data),
    ));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("boom");
    assert!(fut.await.is_err());
}

#[tokio::test]
async fn ehlo_offers_what_the_backends_offer_and_their_size_less_the_headroom() {
    use attitude_balance::Offer;
    use attitude_codec::Extension;
    use attitude_service::protocol::BackendOffer;
    let offer = Offer {
        extensions: [
            Extension::Pipelining,
            Extension::EightBitMime,
            Extension::SmtpUtf8,
            Extension::Dsn,
            Extension::BinaryMime,
            Extension::RequireTls,
            Extension::FutureRelease,
        ]
        .into_iter()
        .collect(),
        size_limit: Some(800),
    };
    let layer = ProtocolLayer::new(ProtocolConfig {
        backends: Some(BackendOffer::new(move || offer)),
        size_headroom: 100,
        ..config()
    });
    let (mut service, mut handle) = mock::spawn_layer::<Request, Reply, _>(layer);
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let fut = service.call(req(
        session(),
        Event::Command(Command::Ehlo("c.test".into())),
    ));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(ok());
    let reply = fut.await.unwrap();
    // BINARYMIME only with CHUNKING, REQUIRETLS only inside TLS towards verified backends,
    // FUTURERELEASE never (its line carries the backend's own limits).
    assert_eq!(
        reply.lines()[1..].join(" "),
        "PIPELINING SIZE 700 8BITMIME SMTPUTF8 DSN CHUNKING ENHANCEDSTATUSCODES"
    );
}
