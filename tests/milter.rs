//! Milters end to end: a real opendkim (Debian's, signing with a key `opendkim-genkey` made)
//! on the submission listener signs what attitude relays, and the signature verifies
//! (mail-auth, against the test key); milters that are down, silent or confused get their
//! default action, counted, and nothing half-modified reaches the backend.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use attitude_test_support::{
    Attitude, BadMilter, Client, GTUBE, Misbehaviour, OpenDkim, Recorder, Rspamd, free_port,
    silent_nameserver, wait_for,
};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

/// A TXT cache holding the test key: the verifier asks no DNS.
struct Keys(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Keys {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// The DKIM results of `message` against the keys of `signers`.
fn verify(signers: &[&OpenDkim], message: &[u8]) -> Vec<DkimResult> {
    let mut keys = HashMap::new();
    for dkim in signers {
        let record = dkim.public_key();
        let key = || Txt::from(DomainKey::parse(record.as_bytes()).expect("the test key parses"));
        let name = format!("{}._domainkey.{}", dkim.selector, OpenDkim::DOMAIN);
        keys.insert(format!("{name}.").into_boxed_str(), key());
        keys.insert(name.into_boxed_str(), key());
    }
    let keys = Keys(Mutex::new(keys));
    let (_socket, silent) = silent_nameserver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let resolver =
            attitude_policy::dns::resolver(Some(&[silent]), Duration::from_millis(200)).unwrap();
        let authenticator = MessageAuthenticator(resolver);
        let parsed = AuthenticatedMessage::parse(message).expect("a message");
        authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&keys))
            .await
            .iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

/// One message from alice@example.org through `listener`; the reply to its end.
fn send(listener: SocketAddr, subject: &str) -> String {
    send_body(
        listener,
        subject,
        "Hello Bob,\r\n.. a dotted line\r\nand the end.",
    )
}

/// As [`send`], with this body (CRLF lines, dot-stuffed).
fn send_body(listener: SocketAddr, subject: &str, body: &str) -> String {
    let mut c = Client::connect(listener);
    c.cmd("EHLO client.test");
    let mut reply = c.cmd("MAIL FROM:<alice@example.org>");
    if reply.starts_with("250") {
        reply = c.cmd("RCPT TO:<bob@example.com>");
    }
    if reply.starts_with("250") {
        reply = c.cmd("DATA");
    }
    if reply.starts_with("354") {
        c.send(
            format!(
                "From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\
                 Date: Wed, 02 Dec 2026 20:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\
                 \r\n{body}\r\n.\r\n"
            )
            .as_bytes(),
        );
        reply = c.reply();
    }
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
    c.cmd("QUIT");
    reply
}

#[test]
fn opendkim_on_the_submission_listener_signs_and_the_signature_verifies() {
    let dkim = OpenDkim::start();
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &format!(
            "[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
             [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n\
             policy.milters = [{{ name = \"opendkim\", address = \"inet:{}\" }}]\n",
            dkim.addr
        ),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    let reply = send(attitude.listener("submission"), "signed");
    assert!(reply.starts_with("250"), "{reply}");
    let reply = send(attitude.listener("mx"), "unsigned");
    assert!(reply.starts_with("250"), "{reply}");
    let got = recorder.messages();
    assert_eq!(got.len(), 2);
    let signed = &got[0].content;
    let text = String::from_utf8_lossy(signed);
    assert!(text.starts_with("DKIM-Signature: v=1;"), "{text}");
    assert!(
        text.contains("d=example.org") && text.contains("s=test"),
        "{text}"
    );
    assert!(
        text.contains("\r\n.. a dotted line\r\n") || text.contains("\r\n. a dotted line\r\n"),
        "{text}"
    );
    let results = verify(&[&dkim], signed);
    assert_eq!(results, [DkimResult::Pass], "{text}");
    // With attitude's own trace header on top, as the backend stored it, it still verifies.
    let mut stored = got[0].trace.clone().unwrap_or_default().into_bytes();
    stored.extend_from_slice(signed);
    assert_eq!(verify(&[&dkim], &stored), [DkimResult::Pass]);
    // The MX listener has no milter.
    assert!(!String::from_utf8_lossy(&got[1].content).contains("DKIM-Signature"));
    assert_eq!(
        attitude
            .metric(
                "attitude_milter_calls_total{milter=\"opendkim\",stage=\"eom\",result=\"accept\"}"
            )
            .or_else(|| attitude.metric(
                "attitude_milter_calls_total{milter=\"opendkim\",stage=\"eom\",result=\"continue\"}"
            )),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric(
            "attitude_milter_modifications_total{milter=\"opendkim\",kind=\"insert_header\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn milters_that_fail_get_their_default_action_and_nothing_half_changed_goes_on() {
    let recorder = Recorder::start();
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let silent = BadMilter::start(Misbehaviour::Silent);
    let garbage = BadMilter::start(Misbehaviour::Garbage);
    let dies = BadMilter::start(Misbehaviour::DiesAtEnd);
    let listener = |name: &str, milter: SocketAddr, action: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n\
             policy.milters = [{{ name = \"{name}\", address = \"inet:{milter}\", \
             default_action = \"{action}\", connect_timeout = \"1s\", command_timeout = \"1s\", \
             content_timeout = \"1s\" }}]\n"
        )
    };
    let attitude = Attitude::start(
        &[
            listener("down", down, "accept"),
            listener("silent", silent.addr, "tempfail"),
            listener("garbage", garbage.addr, "reject"),
            listener("dies", dies.addr, "accept"),
        ]
        .concat(),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    // Down, accept: delivered as if it were not there.
    assert!(send(attitude.listener("down"), "down").starts_with("250"));
    // Silent, tempfail: MAIL gets 451 after the connect timeout; the session goes on.
    let reply = send(attitude.listener("silent"), "silent");
    assert!(reply.starts_with("451 4.7.1"), "{reply}");
    // Garbage, reject: 554.
    let reply = send(attitude.listener("garbage"), "garbage");
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    // Dies at end of message after a header change, accept: delivered without the change.
    assert!(send(attitude.listener("dies"), "dies").starts_with("250"));
    let got = recorder.messages();
    assert_eq!(got.len(), 2, "down and dies delivered");
    for m in &got {
        let text = String::from_utf8_lossy(&m.content);
        assert!(!text.contains("X-Half"), "a half-applied change:\n{text}");
    }
    for (milter, kind) in [
        ("down", "connect"),
        ("silent", "timeout"),
        ("garbage", "protocol"),
        ("dies", "io"),
    ] {
        assert_eq!(
            attitude.metric(&format!(
                "attitude_milter_failures_total{{milter=\"{milter}\",kind=\"{kind}\"}}"
            )),
            Some(1.0),
            "{milter}"
        );
    }
}

#[test]
fn chained_milters_each_see_the_previous_changes() {
    // The second signer also signs DKIM-Signature headers: its signature verifies only if it
    // saw the first one's.
    let first = OpenDkim::start();
    let second = OpenDkim::start_with(
        "second",
        "SignHeaders From,To,Subject,Date,Message-ID,DKIM-Signature\n",
    );
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &format!(
            "[[milters]]\nname = \"first\"\naddress = \"inet:{}\"\n\
             [[milters]]\nname = \"second\"\naddress = \"inet:{}\"\n",
            first.addr, second.addr
        ),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    assert!(send(attitude.smtp, "chained").starts_with("250"));
    let got = recorder.messages();
    let text = String::from_utf8_lossy(&got[0].content);
    let signatures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(signatures.len(), 2, "{text}");
    // The second milter's signature is on top (it inserted it at the top after the first) and
    // covers the first one's.
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {text}"))
    };
    assert!(at("s=second") < at("s=test"), "{text}");
    assert!(text.contains("h=DKIM-Signature:From"), "{text}");
    assert_eq!(
        verify(&[&first, &second], &got[0].content),
        [DkimResult::Pass, DkimResult::Pass],
        "{text}"
    );
}

#[test]
fn rspamd_as_a_milter_refuses_gtube_with_its_text_and_adds_its_headers() {
    let mut rspamd = Rspamd::start();
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &format!(
            "[[milters]]\nname = \"rspamd\"\naddress = \"inet:{}\"\ncontent_timeout = \"30s\"\n",
            rspamd.milter
        ),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    let reply = send_body(attitude.smtp, "spam", GTUBE);
    assert!(reply.starts_with("5"), "{reply}\n{}", rspamd.log());
    assert!(reply.contains("Gtube pattern"), "{reply}");
    let reply = send(attitude.smtp, "clean");
    assert!(reply.starts_with("250"), "{reply}\n{}", rspamd.log());
    let got = recorder.messages();
    assert_eq!(got.len(), 1, "the GTUBE message never reached the backend");
    let text = String::from_utf8_lossy(&got[0].content);
    assert!(
        text.contains("X-Spamd-Result:") || text.contains("X-Spam-Status:"),
        "rspamd's headers:\n{text}"
    );
    rspamd.stop();
}

#[test]
fn envelope_changes_pass_relay_control_again_then_the_backend_gets_the_new_envelope() {
    let recorder = Recorder::start();
    let local = BadMilter::start(Misbehaviour::Readdresses(false));
    let elsewhere = BadMilter::start(Misbehaviour::Readdresses(true));
    // The clients are not trusted: only example.com is accepted from them.
    let listener = |name: &str, milter: SocketAddr| {
        format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n\
             policy.milters = [{{ name = \"{name}\", address = \"inet:{milter}\" }}]\n"
        )
    };
    let attitude = Attitude::start(
        &[
            "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n".to_string(),
            listener("local", local.addr),
            listener("elsewhere", elsewhere.addr),
        ]
        .concat(),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    // bob deleted, carol added: the backend gets the message for carol only.
    let reply = send(attitude.listener("local"), "readdressed");
    assert!(reply.starts_with("250"), "{reply}");
    // A recipient the client could not have relayed to: the message fails, nothing delivered.
    // The client is not slowed for it (the tarpit's suspicious delay is 3 s a reply).
    let started = std::time::Instant::now();
    let reply = send(attitude.listener("elsewhere"), "relaying");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(reply.starts_with("451 4.7.1"), "{reply}");
    let got = recorder.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, ["carol@example.com"]);
    assert_eq!(
        attitude.metric(
            "attitude_milter_modifications_total{milter=\"local\",kind=\"envelope_applied\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric(
            "attitude_milter_modifications_total{milter=\"elsewhere\",kind=\"envelope_refused\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn in_dry_run_a_milter_is_asked_and_counted_and_nothing_it_says_applies() {
    let recorder = Recorder::start();
    let rejects = BadMilter::start(Misbehaviour::RejectsMail);
    let milter = |name: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n\
             policy.milters = [{{ name = \"{name}\", address = \"inet:{}\" }}]\n",
            rejects.addr
        )
    };
    let attitude = Attitude::start(
        &[
            milter("enforce"),
            milter("dry"),
            "policy.milter = { mode = \"dry-run\" }\n".to_string(),
        ]
        .concat(),
        &[recorder.addr],
    );
    assert!(wait_for(Duration::from_secs(10), || attitude
        .http_get("/readyz")
        .0
        == 200));
    let reply = send(attitude.listener("enforce"), "refused");
    assert_eq!(reply, "550 5.7.1 Command rejected");
    assert!(send(attitude.listener("dry"), "delivered").starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
    assert_eq!(
        attitude
            .metric("attitude_policy_decisions_total{policy=\"milter\",action=\"would_reject\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"milter\",action=\"reject\"}"),
        Some(1.0)
    );
}
