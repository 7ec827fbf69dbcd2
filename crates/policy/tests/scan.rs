//! The scan policy in process, over scripted engines on loopback (a clamd that speaks INSTREAM,
//! an rspamd that answers checkv2) that take their time on purpose: what the inner service (the
//! relay) is given, and when. The real engines are in `tests/scan.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attitude_codec::{Command, MailFrom, Reply};
use attitude_engines::clamav::Clamd;
use attitude_engines::rspamd::Rspamd;
use attitude_layers::Mode;
use attitude_policy::Decisions;
use attitude_policy::content::ByteBudget;
use attitude_policy::scan::{
    ClamavPolicy, Fallback, RspamdPolicy, ScanConfig, ScanLayer, ScanMetrics,
};
use attitude_service::{BoxError, DataOutcome, Event, Request, Session, Transaction, replies};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

/// A clamd that reads a whole INSTREAM, waits `delay`, then answers `reply`.
async fn scripted_clamd(delay: Duration, reply: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut command = [0u8; 10];
                s.read_exact(&mut command).await.unwrap();
                assert_eq!(&command, b"zINSTREAM\0");
                loop {
                    let len = s.read_u32().await.unwrap();
                    if len == 0 {
                        break;
                    }
                    let mut chunk = vec![0; len as usize];
                    s.read_exact(&mut chunk).await.unwrap();
                }
                tokio::time::sleep(delay).await;
                let _ = s.write_all(format!("stream: {reply}\0").as_bytes()).await;
            });
        }
    });
    addr
}

/// The request heads a scripted rspamd was sent.
type Heads = Arc<Mutex<Vec<String>>>;

/// An rspamd that reads a request, waits `delay`, then answers `json`.
async fn scripted_rspamd(delay: Duration, json: &'static str) -> SocketAddr {
    scripted_rspamd_seeing(delay, json).await.0
}

/// [`scripted_rspamd`], with the heads of the requests it got.
async fn scripted_rspamd_seeing(delay: Duration, json: &'static str) -> (SocketAddr, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Heads::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then Content-Length octets of body.
                    let body_at = loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..body_at]).to_lowercase();
                    seen.lock().unwrap().push(head.clone());
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap();
                    while request.len() < body_at + length {
                        let n = s.read(&mut buf).await.unwrap();
                        request.extend_from_slice(&buf[..n]);
                    }
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    s.write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, heads)
}

fn config(clamd: Option<SocketAddr>, rspamd: Option<(SocketAddr, bool)>) -> ScanConfig {
    ScanConfig {
        clamav: clamd.map(|addr| ClamavPolicy {
            clamd: Clamd::new(
                vec![addr.to_string().parse().unwrap()],
                Duration::from_secs(5),
            ),
            max_size: 1 << 20,
            on_oversize: Fallback::Accept,
            on_error: Fallback::Tempfail,
            mode: Mode::Enforce,
            decisions: Decisions::noop(),
        }),
        rspamd: rspamd.map(|(addr, headers)| RspamdPolicy {
            rspamd: Rspamd::new(&format!("http://{addr}"), Duration::from_secs(5), headers)
                .unwrap(),
            max_size: 1 << 20,
            on_error: Fallback::Accept,
            headers,
            settings_id: None,
            skip_authenticated: false,
            skip_trusted: false,
            spam_headers: vec![("X-Spam".into(), "Yes".into())],
            mode: Mode::Enforce,
            decisions: Decisions::noop(),
        }),
        budget: Arc::new(ByteBudget::new(1 << 24, metrics::gauge!("test_budget"))),
        on_over_budget: Fallback::Tempfail,
        trusted: Vec::new(),
        metrics: ScanMetrics::register(),
    }
}

/// What the inner service (the relay's place) was given, in order.
type Seen = Arc<Mutex<Vec<Event>>>;

fn inner(
    seen: Seen,
) -> impl Service<
    Request,
    Response = Reply,
    Error = BoxError,
    Future = std::future::Ready<Result<Reply, BoxError>>,
> + Send
+ 'static {
    tower::service_fn(move |req: Request| {
        let reply = match &req.event {
            Event::Command(Command::Data) => replies::start_data(),
            Event::DataEnd(DataOutcome::Failed(reply)) => reply.clone(),
            Event::DataEnd(DataOutcome::Complete) => Reply::plain(250, "2.0.0 queued"),
            _ => replies::ok(),
        };
        seen.lock().unwrap().push(req.event);
        std::future::ready(Ok(reply))
    })
}

fn session() -> Arc<Session> {
    let mut s = Session::new(
        1,
        "192.0.2.7:40000".parse().unwrap(),
        "198.51.100.1:25".parse().unwrap(),
    );
    s.transaction = Some(Box::new(Transaction {
        mail: MailFrom {
            address: "alice@example.org".into(),
            size: None,
            body: None,
            smtputf8: false,
            params: Vec::new(),
        },
        rcpts: vec!["bob@example.com".into()],
        started: std::time::Instant::now(),
        data_bytes: 0,
        bdat: false,
    }));
    Arc::new(s)
}

/// Calls `service` with `event` in `session`, once it is ready.
async fn call<S>(service: &mut S, session: &Arc<Session>, event: Event) -> Reply
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    let req = Request {
        session: session.clone(),
        event,
    };
    service.ready().await.unwrap().call(req).await.unwrap()
}

/// Sends `content` as chunks of one line each.
async fn chunks<S>(service: &mut S, session: &Arc<Session>, content: &[u8])
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    for line in content.split_inclusive(|&b| b == b'\n') {
        let chunk = Event::DataChunk(Bytes::copy_from_slice(line));
        call(service, session, chunk).await;
    }
}

/// Sends one DATA message through `service`; the replies to DATA and to end of data.
async fn message<S>(service: &mut S, content: &[u8]) -> (Reply, Reply)
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    let session = session();
    let data = call(service, &session, Event::Command(Command::Data)).await;
    chunks(service, &session, content).await;
    let end = call(service, &session, Event::DataEnd(DataOutcome::Complete)).await;
    (data, end)
}

const NO_ACTION: &str = r#"{"action":"no action","score":1.0,"required_score":15.0,
    "milter":{"add_headers":{"X-Spamd-Result":{"value":"default: False [1.00 / 15.00]","order":0}},
    "remove_headers":{"X-Spamd-Result":0}}}"#;

const MESSAGE: &[u8] = b"X-Spamd-Result: forged by the sender\r\nSubject: hi\r\n\r\nbody\r\n";

#[tokio::test]
async fn both_engines_run_at_once_the_slower_one_bounds_the_wait() {
    let clamd = scripted_clamd(Duration::from_millis(300), "OK").await;
    let rspamd = scripted_rspamd(Duration::from_millis(300), NO_ACTION).await;
    let seen = Seen::default();
    let mut service =
        ScanLayer::new(config(Some(clamd), Some((rspamd, false)))).layer(inner(seen.clone()));
    let started = Instant::now();
    let (_, end) = message(&mut service, MESSAGE).await;
    let took = started.elapsed();
    assert_eq!(end.code(), 250);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(550),
        "two 300 ms scans took {took:?}: not at once"
    );
}

#[tokio::test]
async fn a_held_message_reaches_the_relay_only_after_the_verdict_with_rspamds_headers() {
    let rspamd = scripted_rspamd(Duration::from_millis(50), NO_ACTION).await;
    let seen = Seen::default();
    let mut service = ScanLayer::new(config(None, Some((rspamd, true)))).layer(inner(seen.clone()));
    let session = session();
    // DATA and the content: answered, but nothing is passed on yet.
    let data = call(&mut service, &session, Event::Command(Command::Data)).await;
    assert_eq!(data.code(), 354);
    chunks(&mut service, &session, MESSAGE).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "the backend was asked before the verdict"
    );
    let end = call(
        &mut service,
        &session,
        Event::DataEnd(DataOutcome::Complete),
    )
    .await;
    assert_eq!(end.code(), 250);
    assert!(matches!(
        seen.lock().unwrap()[0],
        Event::Command(Command::Data)
    ));
    assert_eq!(
        passed_on(&seen),
        "X-Spamd-Result: default: False [1.00 / 15.00]\r\nSubject: hi\r\n\r\nbody\r\n",
        "rspamd's header replaces the sender's forgery; the rest is as sent"
    );
    assert!(matches!(
        seen.lock().unwrap().last().unwrap(),
        Event::DataEnd(DataOutcome::Complete)
    ));
}

#[tokio::test]
async fn a_refused_message_ends_failed_and_the_next_one_gets_its_own_verdict() {
    let virus = scripted_clamd(Duration::ZERO, "Worm.Test FOUND").await;
    let seen = Seen::default();
    let mut service = ScanLayer::new(config(Some(virus), None)).layer(inner(seen.clone()));
    let (data, end) = message(&mut service, MESSAGE).await;
    assert_eq!(data.code(), 354);
    assert_eq!(
        end.to_string().trim_end(),
        "554 5.7.1 Virus found: Worm.Test"
    );
    assert!(matches!(
        seen.lock().unwrap().last().unwrap(),
        Event::DataEnd(DataOutcome::Failed(_))
    ));

    // A message that ends another way (RSET mid-transaction) leaves nothing behind: the next
    // message is scanned on its own connection and gets its own verdict.
    let clean = scripted_clamd(Duration::ZERO, "OK").await;
    let seen = Seen::default();
    let mut service = ScanLayer::new(config(Some(clean), None)).layer(inner(seen.clone()));
    let session = session();
    for event in [
        Event::Command(Command::Data),
        Event::DataChunk(Bytes::from_static(b"half a message\r\n")),
        Event::DataEnd(DataOutcome::Failed(Reply::plain(552, "too big"))),
        Event::Command(Command::Rset),
    ] {
        call(&mut service, &session, event).await;
    }
    let (_, end) = message(&mut service, MESSAGE).await;
    assert_eq!(end.code(), 250);
}

/// The content the inner service was given, put together.
fn passed_on(seen: &Seen) -> String {
    let content: Vec<u8> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::DataChunk(c) => Some(c.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8(content).unwrap()
}

#[tokio::test]
async fn rspamd_is_told_the_envelope_and_its_settings_id() {
    let (rspamd, heads) = scripted_rspamd_seeing(Duration::ZERO, NO_ACTION).await;
    let mut config = config(None, Some((rspamd, true)));
    config.rspamd.as_mut().unwrap().settings_id = Some("inbound".into());
    let mut service = ScanLayer::new(config).layer(inner(Seen::default()));
    message(&mut service, MESSAGE).await;
    let head = heads.lock().unwrap().pop().unwrap();
    for line in [
        "post /checkv2 http/1.1",
        "ip: 192.0.2.7",
        "from: alice@example.org",
        "rcpt: bob@example.com",
        "queue-id: 1.1",
        "settings-id: inbound",
        "flags: milter",
    ] {
        assert!(head.contains(line), "{line:?} not in:\n{head}");
    }
    assert!(!head.contains("hostname:"), "no unverified host name");
}

#[tokio::test]
async fn rspamds_actions_become_replies_or_header_changes() {
    let cases: [(&'static str, u16, &str); 6] = [
        (
            r#"{"action":"add header","score":7.0}"#,
            250,
            "X-Spam: Yes\r\nX-Spamd-Result: forged by the sender\r\nSubject: hi\r\n\r\nbody\r\n",
        ),
        (
            r#"{"action":"rewrite subject","score":8.0,"subject":"*** SPAM *** hi"}"#,
            250,
            "X-Spamd-Result: forged by the sender\r\nSubject: *** SPAM *** hi\r\n\r\nbody\r\n",
        ),
        (
            r#"{"action":"quarantine","score":12.0}"#,
            250,
            "X-Spam: Yes\r\nX-Spam-Quarantine: rspamd, score 12.00\r\n\
             X-Spamd-Result: forged by the sender\r\nSubject: hi\r\n\r\nbody\r\n",
        ),
        (r#"{"action":"greylist","score":4.0}"#, 451, ""),
        (
            r#"{"action":"discard","score":20.0,"messages":{"smtp_message":"Go away\r\nBcc: x"}}"#,
            554,
            "",
        ),
        (
            r#"{"action":"no action","score":0.0}"#,
            250,
            "X-Spamd-Result: forged by the sender\r\nSubject: hi\r\n\r\nbody\r\n",
        ),
    ];
    for (json, code, delivered) in cases {
        let rspamd = scripted_rspamd(Duration::ZERO, json).await;
        let seen = Seen::default();
        let mut service =
            ScanLayer::new(config(None, Some((rspamd, true)))).layer(inner(seen.clone()));
        let (_, end) = message(&mut service, MESSAGE).await;
        assert_eq!(end.code(), code, "{json}: {end}");
        if code == 554 {
            assert_eq!(
                end.to_string().trim_end(),
                "554 5.7.1 Go away Bcc: x",
                "one safe line"
            );
        }
        if code >= 400 {
            // Held and refused: the backend was never given the message.
            assert!(passed_on(&seen).is_empty(), "{json}");
            assert!(matches!(
                seen.lock().unwrap().last().unwrap(),
                Event::DataEnd(DataOutcome::Failed(_))
            ));
        } else {
            assert_eq!(passed_on(&seen), delivered, "{json}");
        }
    }
}

#[tokio::test]
async fn in_dry_run_nothing_is_held_or_changed_and_nothing_refused() {
    let rspamd = scripted_rspamd(Duration::ZERO, r#"{"action":"reject","score":20.0}"#).await;
    let seen = Seen::default();
    let mut config = config(None, Some((rspamd, true)));
    config.rspamd.as_mut().unwrap().mode = Mode::DryRun;
    let mut service = ScanLayer::new(config).layer(inner(seen.clone()));
    let session = session();
    call(&mut service, &session, Event::Command(Command::Data)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "DATA went on at once: streamed"
    );
    chunks(&mut service, &session, MESSAGE).await;
    assert_eq!(
        passed_on(&seen).as_bytes(),
        MESSAGE,
        "as it came, unchanged"
    );
    let end = call(
        &mut service,
        &session,
        Event::DataEnd(DataOutcome::Complete),
    )
    .await;
    assert_eq!(end.code(), 250, "the would-be refusal is only counted");
}

#[tokio::test]
async fn trusted_and_authenticated_sessions_can_be_left_unchecked() {
    let (rspamd, heads) =
        scripted_rspamd_seeing(Duration::ZERO, r#"{"action":"reject","score":20.0}"#).await;
    // The session's client, 192.0.2.7, is in a trusted network.
    let mut trusted = config(None, Some((rspamd, true)));
    trusted.rspamd.as_mut().unwrap().skip_trusted = true;
    trusted.trusted = vec!["192.0.2.0/24".parse().unwrap()];
    let mut service = ScanLayer::new(trusted).layer(inner(Seen::default()));
    assert_eq!(message(&mut service, MESSAGE).await.1.code(), 250);

    // skip_authenticated: an authenticated session is not checked, an anonymous one is.
    let mut config = config(None, Some((rspamd, true)));
    config.rspamd.as_mut().unwrap().skip_authenticated = true;
    let mut service = ScanLayer::new(config).layer(inner(Seen::default()));
    let mut authenticated = (*session()).clone();
    authenticated.auth = Some("alice".into());
    let authenticated = Arc::new(authenticated);
    call(&mut service, &authenticated, Event::Command(Command::Data)).await;
    chunks(&mut service, &authenticated, MESSAGE).await;
    let end = Event::DataEnd(DataOutcome::Complete);
    assert_eq!(call(&mut service, &authenticated, end).await.code(), 250);
    assert!(heads.lock().unwrap().is_empty(), "rspamd was never asked");
    assert_eq!(message(&mut service, MESSAGE).await.1.code(), 554);
    assert_eq!(heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_held_message_past_the_budget_or_max_size_streams_on_unchecked_or_is_deferred() {
    let (rspamd, heads) =
        scripted_rspamd_seeing(Duration::ZERO, r#"{"action":"reject","score":20.0}"#).await;
    // MESSAGE is 58 octets: a 40-octet budget, then a 40-octet max_size, with "accept".
    for small in ["budget", "max_size"] {
        let mut config = config(None, Some((rspamd, true)));
        if small == "budget" {
            config.budget = Arc::new(ByteBudget::new(40, metrics::gauge!("test_budget")));
        } else {
            config.rspamd.as_mut().unwrap().max_size = 40;
        }
        config.on_over_budget = Fallback::Accept;
        let seen = Seen::default();
        let mut service = ScanLayer::new(config).layer(inner(seen.clone()));
        let (data, end) = message(&mut service, MESSAGE).await;
        assert_eq!((data.code(), end.code()), (354, 250), "{small}");
        assert_eq!(
            passed_on(&seen).as_bytes(),
            MESSAGE,
            "{small}: all of it, in order"
        );
        assert!(matches!(
            seen.lock().unwrap()[0],
            Event::Command(Command::Data)
        ));
    }
    assert!(heads.lock().unwrap().is_empty(), "rspamd was never asked");

    // "tempfail": the chunk that does not fit fails the message with 451 4.3.1.
    let mut config = config(None, Some((rspamd, true)));
    config.budget = Arc::new(ByteBudget::new(40, metrics::gauge!("test_budget")));
    let mut service = ScanLayer::new(config).layer(inner(Seen::default()));
    let session = session();
    call(&mut service, &session, Event::Command(Command::Data)).await;
    let mut replies = Vec::new();
    for line in MESSAGE.split_inclusive(|&b| b == b'\n') {
        let chunk = Event::DataChunk(Bytes::copy_from_slice(line));
        replies.push(call(&mut service, &session, chunk).await.to_string());
    }
    assert!(
        replies.iter().any(|r| r.starts_with("451 4.3.1")),
        "{replies:?}"
    );
}

#[tokio::test]
async fn a_virus_in_dry_run_is_delivered_and_clamd_away_can_fail_open() {
    let virus = scripted_clamd(Duration::ZERO, "Worm.Test FOUND").await;
    let mut dry_run = config(Some(virus), None);
    dry_run.clamav.as_mut().unwrap().mode = Mode::DryRun;
    let mut service = ScanLayer::new(dry_run).layer(inner(Seen::default()));
    assert_eq!(message(&mut service, MESSAGE).await.1.code(), 250);

    // Nothing listens there: tempfail by default, delivered with on_error = accept.
    let gone = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let mut service = ScanLayer::new(config(Some(gone), None)).layer(inner(Seen::default()));
    let end = message(&mut service, MESSAGE).await.1;
    assert_eq!(
        end.to_string().trim_end(),
        "451 4.3.0 Virus scanner unavailable; try again later"
    );
    let mut accept = config(Some(gone), None);
    accept.clamav.as_mut().unwrap().on_error = Fallback::Accept;
    let mut service = ScanLayer::new(accept).layer(inner(Seen::default()));
    assert_eq!(message(&mut service, MESSAGE).await.1.code(), 250);
}
