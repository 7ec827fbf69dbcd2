//! Transparency in process: attitude offers what its backends offer and passes on what they
//! take (SMTPUTF8, DSN, AUTH=, BDAT), goes only to a backend that can take a transaction, adds
//! its trace header and XFORWARD, against scripted backends (the session harness).

use std::net::SocketAddr;
use std::sync::Arc;

use attitude_balance::{BackendSpec, IdentityMode};
use attitude_test_support::session::{Backends, Client, Harness, Script, specs};

const A: &str = "198.51.100.1:25";
const B: &str = "198.51.100.2:25";
const C: &str = "198.51.100.3:25";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// What Postfix 3.7 offers.
fn postfix() -> Script {
    Script::smtp(&[
        "PIPELINING",
        "SIZE 10240000",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
    ])
}

/// `script`, then alice's MAIL (answered with the RCPT it comes with) and her RCPT for bob.
fn alice_to_bob(script: Script) -> Script {
    script
        .read("MAIL FROM:<alice@example.org>")
        .expect("RCPT TO:<bob@example.com>", "250 ok\r\n250 ok")
}

/// A harness over the backend at A, which it already knows (as after a health check).
async fn learned(backends: &Backends) -> Harness {
    let harness = Harness::new(backends, &[addr(A)]);
    harness.learn(&[addr(A)]).await;
    harness
}

async fn ehlo(c: &mut Client) -> String {
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO client.test").await
}

#[tokio::test(start_paused = true)]
async fn ehlo_offers_what_the_backends_offer_and_parameters_reach_them_as_sent() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        postfix()
            .read("MAIL FROM:<jö@bücher.example> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1")
            .expect(
                "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.com",
                "250 2.1.0 ok\r\n250 2.1.5 ok",
            )
            .expect("RCPT TO:<ünï@bücher.example> NOTIFY=NEVER", "250 2.1.5 ok")
            .expect("DATA", "354 go ahead")
            .content("250 2.0.0 queued"),
    );
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    let offer = ehlo(&mut c).await;
    for ext in ["8BITMIME", "SMTPUTF8", "DSN", "CHUNKING"] {
        assert!(offer.contains(ext), "{offer}");
    }
    // SIZE: the backend's limit less the headroom for what attitude adds.
    assert!(
        offer.contains(&format!("SIZE {}", 10_240_000 - 16 * 1024)),
        "{offer}"
    );
    assert!(
        !offer.contains("BINARYMIME") && !offer.contains("REQUIRETLS"),
        "{offer}"
    );
    let mail = c
        .cmd("MAIL FROM:<jö@bücher.example> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1")
        .await;
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = c
        .cmd("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.com")
        .await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(
        c.cmd("RCPT TO:<ünï@bücher.example> NOTIFY=NEVER")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: Grüße\r\n\r\nünïcödé\r\n.\r\n".as_bytes())
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn what_no_backend_offers_is_refused_with_555_and_nothing_reaches_a_backend() {
    let backends = Backends::new();
    backends.script(addr(A), Script::smtp(&["PIPELINING"]));
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    let offer = ehlo(&mut c).await;
    for ext in ["8BITMIME", "SMTPUTF8", "DSN", "BINARYMIME"] {
        assert!(!offer.contains(ext), "{offer}");
    }
    for (mail, reply) in [
        ("MAIL FROM:<jö@bücher.example> SMTPUTF8", "555 5.6.7"),
        ("MAIL FROM:<a@example.org> RET=FULL", "555 5.5.4"),
        ("MAIL FROM:<a@example.org> BODY=8BITMIME", "555 5.5.4"),
        ("MAIL FROM:<a@example.org> BODY=BINARYMIME", "555 5.5.4"),
        ("MAIL FROM:<a@example.org> AUTH=<>", "555 5.5.4"),
        (
            "MAIL FROM:<a@example.org> X-FOO=1",
            "555 5.5.4 Parameter X-FOO",
        ),
        ("MAIL FROM:<a@example.org> RET=ALL", "501 5.5.4"),
    ] {
        let got = c.cmd(mail).await;
        assert!(got.starts_with(reply), "{mail}: {got}");
    }
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    let got = c.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER").await;
    assert!(got.starts_with("555 5.5.4"), "{got}");
    assert_eq!(backends.lines(addr(A)), ["EHLO attitude.test"]);
}

#[tokio::test(start_paused = true)]
async fn a_transaction_goes_only_to_a_backend_that_offers_what_it_needs() {
    let backends = Backends::new();
    let utf8 = || Script::smtp(&["PIPELINING", "8BITMIME", "SMTPUTF8"]);
    backends.script(
        addr(A),
        utf8()
            .read("MAIL FROM:<jö@bücher.example> SMTPUTF8")
            .expect("RCPT TO:<bob@example.com>", "250 ok\r\n250 ok")
            .expect("DATA", "354 go")
            .content("250 2.0.0 queued on A"),
    );
    backends.script(addr(B), utf8());
    backends.script(addr(C), Script::smtp(&["PIPELINING", "8BITMIME"]));
    let harness = Harness::new(&backends, &[addr(A), addr(B)]);
    harness.learn(&[addr(A), addr(B)]).await;
    let (mut c, _session) = harness.session();
    assert!(ehlo(&mut c).await.contains("SMTPUTF8"));
    // The backends change after this client was offered SMTPUTF8: B leaves, C (without
    // SMTPUTF8) comes. The transaction goes to A, the one that can take it.
    harness
        .pool
        .set_source("static", specs(&[addr(A), addr(C)]));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    harness.learn(&[addr(C)]).await;
    assert!(
        c.cmd("MAIL FROM:<jö@bücher.example> SMTPUTF8")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued on A");
    // Now no usable backend offers it: try later, not "never".
    harness.pool.set_source("static", specs(&[addr(C)]));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let got = c.cmd("MAIL FROM:<jö@bücher.example> SMTPUTF8").await;
    assert!(got.starts_with("451 4.4.4"), "{got}");
    assert!(got.contains("SMTPUTF8"), "{got}");
    // A new session is not offered it at all.
    let (mut d, _session) = harness.session();
    assert!(!ehlo(&mut d).await.contains("SMTPUTF8"));
    assert!(
        d.cmd("MAIL FROM:<jö@bücher.example> SMTPUTF8")
            .await
            .starts_with("555 5.6.7")
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn bdat_goes_on_as_bdat_to_a_backend_with_chunking() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        alice_to_bob(postfix()).chunks("250 2.0.0 queued as BDAT"),
    );
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    ehlo(&mut c).await;
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
    // Pipelined chunks; the first holds what DATA would end at and what looks like commands.
    let first = "Subject: x\r\n\r\n.\r\nQUIT\r\n";
    let last = ".leading dot\r\nend\r\n";
    c.send(
        format!(
            "BDAT {}\r\n{first}BDAT {} LAST\r\n{last}",
            first.len(),
            last.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received", first.len())
    );
    assert_eq!(c.reply().await, "250 2.0.0 queued as BDAT");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert_eq!(
        backends.messages(addr(A)),
        [format!("{first}{last}").into_bytes()]
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn bdat_goes_on_as_data_to_a_backend_without_chunking() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        alice_to_bob(Script::smtp(&["PIPELINING", "8BITMIME"]))
            .expect("DATA", "354 go")
            .content("250 2.0.0 queued as DATA"),
    );
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    assert!(ehlo(&mut c).await.contains("CHUNKING"));
    c.cmd("MAIL FROM:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    let body = "Subject: y\r\n\r\n.leading\r\n.\r\nbody\r\n";
    c.send(format!("BDAT {} LAST\r\n{body}", body.len()).as_bytes())
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 queued as DATA");
    // Dot-stuffed on the way (the backend's record is the wire form before the final dot).
    assert_eq!(
        backends.messages(addr(A)),
        [b"Subject: y\r\n\r\n..leading\r\n..\r\nbody\r\n".to_vec()]
    );
    // BINARYMIME needs a backend with CHUNKING: not offered here.
    assert!(
        c.cmd("MAIL FROM:<alice@example.org> BODY=BINARYMIME")
            .await
            .starts_with("555")
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_bdat_chunk_that_fails_ends_the_message_at_once_and_nothing_is_committed() {
    let backends = Backends::new();
    backends.script(addr(A), alice_to_bob(postfix()));
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    ehlo(&mut c).await;
    c.cmd("MAIL FROM:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    // A bare LF in the first chunk; the second is already in the pipeline (RFC 3030 §3).
    c.send(b"BDAT 5\r\na\nbc\rBDAT 3 LAST\r\nxyz").await;
    let failed = c.reply().await;
    assert!(failed.starts_with("550 5.6.0"), "{failed}");
    assert!(c.reply().await.starts_with("503 5.5.1"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(backends.messages(addr(A)).is_empty());
    assert!(
        !backends.lines(addr(A)).iter().any(|l| l.contains("BDAT")),
        "{:?}",
        backends.lines(addr(A))
    );
}

#[tokio::test(start_paused = true)]
async fn data_after_bdat_and_bdat_after_helo_are_refused() {
    let backends = Backends::new();
    backends.script(addr(A), alice_to_bob(postfix()).chunks("250 2.0.0 queued"));
    let harness = learned(&backends).await;
    let (mut c, _session) = harness.session();
    ehlo(&mut c).await;
    c.cmd("MAIL FROM:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    c.send(b"BDAT 4\r\nab\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert_eq!(c.cmd("BDAT 0 LAST").await, "250 2.0.0 queued");
    assert!(c.cmd("HELO client.test").await.starts_with("250"));
    c.send(b"BDAT 2 LAST\r\nab").await;
    assert!(c.reply().await.starts_with("502 5.5.1"));
}

#[tokio::test(start_paused = true)]
async fn received_header_and_xforward_tell_the_backend_who_the_client_was() {
    let backends = Backends::new();
    backends.script(
        addr(A),
        Script::smtp(&["PIPELINING", "8BITMIME", "XFORWARD NAME ADDR PROTO HELO IDENT SOURCE"])
            .read("XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.2 PROTO=ESMTP HELO=client.test IDENT=1.1 SOURCE=REMOTE")
            .read("MAIL FROM:<alice@example.org>")
            .expect("RCPT TO:<bob@example.com>", "250 2.0.0 ok\r\n250 ok\r\n250 ok")
            .expect("DATA", "354 go")
            .content("250 2.0.0 queued"),
    );
    let mut harness = Harness::new(&backends, &[]);
    harness.pool.set_source(
        "static",
        vec![BackendSpec {
            addr: addr(A),
            weight: 1,
            identity: IdentityMode::Xforward,
        }],
    );
    harness.relay.received = Some("attitude.test".into());
    harness.learn(&[addr(A)]).await;
    let (mut c, _session) = harness.session();
    ehlo(&mut c).await;
    c.cmd("MAIL FROM:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
    let message = String::from_utf8(backends.messages(addr(A)).remove(0)).unwrap();
    assert!(
        message.starts_with(
            "Received: from client.test ([192.0.2.2])\r\n\tby attitude.test (attitude) with ESMTP id 1.1;\r\n\t"
        ),
        "{message}"
    );
    assert!(
        message.ends_with(" +0000\r\nSubject: x\r\n\r\nhi\r\n"),
        "{message}"
    );
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn auth_on_mail_is_the_clients_when_authenticated_and_empty_otherwise() {
    use attitude_service::auth::AuthOffer;

    let backends = Backends::new();
    let with_auth = || Script::smtp(&["PIPELINING", "AUTH PLAIN LOGIN"]);
    // An unauthenticated session's AUTH= says nobody vouches for the sender.
    backends.script(
        addr(A),
        with_auth()
            .read("MAIL FROM:<alice@example.org> AUTH=<>")
            .expect("RCPT TO:<bob@example.com>", "250 ok\r\n250 ok")
            .expect("RSET", "250 ok")
            .close(),
    );
    // An authenticated one (the exchange relayed on this connection) passes its own on.
    backends.script(
        addr(A),
        with_auth()
            .expect("AUTH PLAIN", "235 2.7.0 Authentication successful")
            .read("MAIL FROM:<alice@example.org> AUTH=alice+40example.org")
            .expect("RCPT TO:<bob@example.com>", "250 ok\r\n250 ok"),
    );
    let mut harness = Harness::new(&backends, &[addr(A)]);
    let offer = AuthOffer::new(vec!["PLAIN".into(), "LOGIN".into()], true);
    offer.set_backend(vec!["PLAIN".into(), "LOGIN".into()]);
    harness.protocol.auth = Some(Arc::new(offer));
    let (mut c, _first) = harness.session();
    ehlo(&mut c).await;
    assert!(
        c.cmd("MAIL FROM:<alice@example.org> AUTH=alice+40example.org")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let (mut d, _second) = harness.session();
    ehlo(&mut d).await;
    // "\0alice@example.org\0secret"
    let plain = "AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==";
    assert!(
        d.cmd(&format!("AUTH PLAIN {plain}"))
            .await
            .starts_with("235")
    );
    assert!(
        d.cmd("MAIL FROM:<alice@example.org> AUTH=alice+40example.org")
            .await
            .starts_with("250")
    );
    assert!(d.cmd("RCPT TO:<bob@example.com>").await.starts_with("250"));
    backends.assert_scripted();
}
