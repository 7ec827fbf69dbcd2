//! Transparency against real peers: attitude in front of a stock Postfix passes on what Postfix
//! offers and takes (SMTPUTF8, DSN, BDAT, 8BITMIME): the queue file Postfix writes is the same
//! as when the client talks to Postfix directly (BDAT sent by a Python client). A Postfix
//! client relays through attitude byte for byte; Python's smtplib sends SMTPUTF8; in front of backends that lack an extension
//! attitude refuses or converts instead of dropping; AUTH= and the trace header are carried;
//! routing forms from clients that may not relay never reach a backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use attitude_test_support::{
    Attitude, Client, Postfix, Recorder, SmtpSink, python_peer, run, scratch_dir, wait_for,
};

/// Sends one envelope (`tests/peers/envelope.py`); returns whether it was accepted, and what
/// the client printed.
fn envelope(addr: SocketAddr, spec: &serde_json::Value) -> (bool, String) {
    run(python_peer("envelope.py")
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(spec.to_string()))
}

/// Waits until attitude's backends are up (a real Postfix's first health check can be slow on
/// a busy machine, and a backend found down at start is out until its next check).
fn ready(attitude: &Attitude) {
    assert!(
        wait_for(Duration::from_secs(20), || attitude.http_get("/readyz").0
            == 200),
        "no backend came up"
    );
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A `postcat` print of a queue file without what differs between two clients and two
/// arrivals: queue ids, times, sizes (attitude adds a header), client and HELO records, and
/// the `Received:`, `Message-Id:` and `Date:` headers (each with its folded lines).
fn comparable(postcat: &str) -> String {
    let differs = [
        "*** ",
        "message_size:",
        "message_arrival_time:",
        "create_time:",
        "named_attribute: log_",
        "named_attribute: client_",
        "named_attribute: reverse_client_name",
        "named_attribute: server_",
        "named_attribute: helo_name",
        "named_attribute: protocol_name",
        "named_attribute: rewrite_context",
    ];
    let mut out = Vec::new();
    let mut skipping = false;
    for line in postcat.lines() {
        if skipping && line.starts_with([' ', '\t']) {
            continue;
        }
        skipping = ["Received:", "Message-Id:", "Date:"]
            .iter()
            .any(|h| line.starts_with(h));
        if skipping || differs.iter().any(|d| line.starts_with(d)) {
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

#[test]
fn a_postfix_backend_queues_the_same_through_attitude_as_sent_to_it_directly() {
    let postfix = Postfix::start();
    let attitude = Attitude::start("", &[postfix.held]);
    ready(&attitude);
    let dir = scratch_dir("transparency");
    let utf8 = write(
        &dir,
        "utf8.eml",
        "From: Jö <jö@bücher.example>\r\nTo: ünï@example.com\r\nSubject: Grüße aus Köln\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\nünïcödé ✓\r\n.\r\n..two\r\n"
            .as_bytes(),
    );
    let mut long = String::from("Subject: in chunks\r\n\r\n");
    for i in 0..40 {
        long.push_str(&format!("line {i:02} .{}\r\n", "x".repeat(i * 3)));
    }
    let chunked = write(&dir, "chunked.eml", long.as_bytes());
    let latin = write(
        &dir,
        "latin.eml",
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\
          Content-Transfer-Encoding: 8bit\r\n\r\nK\xf6ln, gr\xfc\xdfe\r\n",
    );
    let cases = [
        (
            "SMTPUTF8 sender and recipients, UTF-8 headers",
            serde_json::json!({
                "from": "jö@bücher.example",
                "mail_options": ["SMTPUTF8", "BODY=8BITMIME"],
                "rcpts": [["bob@example.com", []], ["ünï@example.com", []]],
                "file": utf8,
            }),
        ),
        (
            "DSN: RET, ENVID, NOTIFY, ORCPT",
            serde_json::json!({
                "from": "alice@example.org",
                "mail_options": ["RET=HDRS", "ENVID=QQ+2B1"],
                "rcpts": [
                    ["bob@example.com", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+40example.com"]],
                    ["carol@example.com", ["NOTIFY=NEVER"]],
                ],
                "file": utf8,
            }),
        ),
        (
            "BDAT in several chunks",
            serde_json::json!({
                "from": "alice@example.org",
                "rcpts": [["bob@example.com", []]],
                "file": chunked,
                "chunks": [7, 300, 1000],
            }),
        ),
        (
            "8-bit content with BODY=8BITMIME",
            serde_json::json!({
                "from": "alice@example.org",
                "mail_options": ["BODY=8BITMIME"],
                "rcpts": [["bob@example.com", []]],
                "file": latin,
            }),
        ),
    ];
    for (i, (what, spec)) in cases.iter().enumerate() {
        let (direct, out) = envelope(postfix.held, spec);
        assert!(direct, "{what}, directly: {out}");
        let (through, out) = envelope(attitude.smtp, spec);
        assert!(through, "{what}, through attitude: {out}");
        assert!(out.contains("250"), "{out}");
        let held = postfix.wait_held(2 * (i + 1));
        assert_eq!(held.len(), 2 * (i + 1), "{what}: {held:?}");
        let (direct, through) = (&held[2 * i], &held[2 * i + 1]);
        assert_eq!(
            comparable(direct),
            comparable(through),
            "{what}: the queue file differs\n--- direct:\n{direct}\n--- through attitude:\n{through}"
        );
        // attitude's own trace is there, under Postfix's.
        assert!(
            through.contains("by attitude.test (attitude) with "),
            "{through}"
        );
    }
    // The DSN records really are there (not both empty).
    let dsn = comparable(&postfix.held_messages()[3]);
    for record in [
        "named_attribute: envelope_id=QQ+1",
        "named_attribute: ret_flags=2",
        "named_attribute: dsn_orig_rcpt=rfc822;bob@example.com",
        "named_attribute: notify_flags=6",
    ] {
        assert!(dsn.contains(record), "{record} in\n{dsn}");
    }
    // Postfix saw BDAT from attitude for the chunked message.
    assert!(
        attitude
            .metric("attitude_commands_total{verb=\"BDAT\",class=\"2xx\"}")
            .is_some_and(|n| n >= 3.0)
    );
}

#[test]
fn a_postfix_client_relays_through_attitude_byte_exact() {
    let backend = Postfix::start();
    let attitude = Attitude::start("", &[backend.held]);
    ready(&attitude);
    let client = Postfix::start_with(&format!(
        "relayhost = [{}]:{}\ndefault_transport = smtp\nrelay_transport = smtp\n\
         smtp_tls_security_level = none\nmaximal_queue_lifetime = 0\n",
        attitude.smtp.ip(),
        attitude.smtp.port()
    ));
    let dir = scratch_dir("postfix-client");
    let mut body = String::from(
        "From: alice@example.org\r\nTo: bob@example.com\r\nSubject: via Postfix\r\n\r\n",
    );
    for i in 0..2000 {
        body.push_str(&format!(
            "{i:05} .dot and text to make the message longer\r\n"
        ));
    }
    let file = write(&dir, "m.eml", body.as_bytes());
    let spec = serde_json::json!({
        "from": "alice@example.org",
        "rcpts": [["bob@example.com", []]],
        "file": file,
    });
    let (ok, out) = envelope(client.plain, &spec);
    assert!(ok, "{out}\n--- the client Postfix:\n{}", client.log());
    let held = backend.wait_held(1);
    assert_eq!(
        held.len(),
        1,
        "{}\n---backend:\n{}",
        client.log(),
        backend.log()
    );
    let content = held[0]
        .split_once("*** MESSAGE CONTENTS")
        .and_then(|(_, c)| c.split_once('\n'))
        .map(|(_, c)| c)
        .unwrap();
    let content = comparable(content.split("*** HEADER EXTRACTED").next().unwrap());
    let sent = comparable(&body.replace("\r\n", "\n"));
    assert_eq!(
        content.trim_end(),
        sent.trim_end(),
        "byte for byte, headers aside"
    );
    // Postfix's SMTP client (3.7) has no BDAT (only its server does): it saw CHUNKING offered
    // and sent DATA, which attitude passed on.
    assert!(
        attitude
            .metric("attitude_commands_total{verb=\"DATA\",class=\"3xx\"}")
            .is_some_and(|n| n >= 1.0),
        "{}",
        client.log()
    );
    assert!(
        client
            .wait_log(&["relay=", &attitude.smtp.port().to_string(), "status=sent"])
            .is_some(),
        "{}",
        client.log()
    );
}

#[test]
fn smtplib_sends_smtputf8_through_attitude_to_aiosmtpd() {
    let recorder = Recorder::start();
    let attitude = Attitude::start("", &[recorder.addr]);
    let dir = scratch_dir("smtputf8");
    let file = write(
        &dir,
        "m.eml",
        "From: jö@bücher.example\r\nSubject: Grüße\r\n\r\nünï\r\n".as_bytes(),
    );
    let spec = serde_json::json!({
        "from": "jö@bücher.example",
        "mail_options": ["SMTPUTF8"],
        "rcpts": [["ünï@bücher.example", []]],
        "file": file,
    });
    let (ok, out) = envelope(attitude.smtp, &spec);
    assert!(ok, "{out}");
    assert!(out.contains("smtputf8"), "{out}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].mail_from, "jö@bücher.example");
    assert_eq!(m[0].rcpt_tos, ["ünï@bücher.example"]);
    assert_eq!(
        m[0].content,
        "From: jö@bücher.example\r\nSubject: Grüße\r\n\r\nünï\r\n".as_bytes()
    );
    // The trace header parses as one, with the protocol of RFC 6531.
    let trace = m[0].trace.clone().expect("attitude's Received header");
    let (ok, parsed) = run(python_peer("received.py").arg(&trace));
    assert!(ok, "{parsed}");
    assert!(parsed.contains("with UTF8SMTP id "), "{parsed}");
    assert!(
        parsed.contains("from envelope.test ([127.0.0.1])"),
        "{parsed}"
    );
}

#[test]
fn a_backend_without_dsn_chunking_8bitmime_gets_data_and_never_a_dropped_parameter() {
    let sink = SmtpSink::start(&["-8", "-N"]);
    let attitude = Attitude::start("", &[sink.addr]);
    let mut c = Client::connect(attitude.smtp);
    let ehlo = c.cmd("EHLO client.test");
    for hidden in ["DSN", "8BITMIME", "SMTPUTF8", "BINARYMIME"] {
        assert!(!ehlo.contains(hidden), "{ehlo}");
    }
    assert!(ehlo.contains("CHUNKING"), "attitude converts BDAT: {ehlo}");
    // Refused rather than silently dropped.
    assert!(
        c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME")
            .starts_with("555 5.5.4")
    );
    assert!(
        c.cmd("MAIL FROM:<a@example.org> RET=FULL")
            .starts_with("555 5.5.4")
    );
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER")
            .starts_with("555 5.5.4")
    );
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    // BDAT from the client goes on as DATA, dot-stuffed.
    let first = "Subject: converted\r\n\r\n.dot\r\n";
    let last = ".\r\nend\r\n";
    c.send(format!("BDAT {}\r\n{first}", first.len()).as_bytes());
    assert!(c.reply().starts_with("250 2.0.0"));
    c.send(format!("BDAT {} LAST\r\n{last}", last.len()).as_bytes());
    let verdict = c.reply();
    assert!(verdict.starts_with("250"), "{verdict}");
    assert!(wait_for(Duration::from_secs(5), || sink.count() == 1));
    let dump = String::from_utf8_lossy(&sink.dumps()[0]).into_owned();
    assert!(
        dump.contains("Subject: converted\r\n\r\n.dot\r\n.\r\nend\r\n")
            || dump.contains("Subject: converted\n\n.dot\n.\nend\n"),
        "{dump}"
    );
}

#[test]
fn auth_on_mail_from_an_authenticated_client_reaches_the_backend() {
    let recorder = Recorder::start_with_accounts(&[("alice@example.org", "secret")]);
    let attitude = Attitude::start(
        "[auth]\nenabled = true\nallow_plaintext = true\n",
        &[recorder.addr],
    );
    let dir = scratch_dir("auth-param");
    let file = write(&dir, "m.eml", b"Subject: authenticated\r\n\r\nhi\r\n");
    let spec = serde_json::json!({
        "from": "alice@example.org",
        "mail_options": ["AUTH=alice+40example.org"],
        "rcpts": [["bob@example.com", []]],
        "file": file,
        "auth": ["alice@example.org", "secret"],
    });
    let (ok, out) = envelope(attitude.smtp, &spec);
    assert!(ok, "{out}");
    // And the same parameter from a client that did not authenticate: nobody vouches.
    let (ok, out2) = envelope(
        attitude.smtp,
        &serde_json::json!({
            "from": "alice@example.org",
            "mail_options": ["AUTH=alice+40example.org"],
            "rcpts": [["bob@example.com", []]],
            "file": spec["file"],
        }),
    );
    assert!(ok, "{out2}");
    let m = recorder.messages();
    assert_eq!(m.len(), 2, "{out}");
    assert_eq!(m[0].login.as_deref(), Some("alice@example.org"));
    assert_eq!(m[0].mail_auth.as_deref(), Some("alice+40example.org"));
    assert_eq!(m[1].mail_auth.as_deref(), Some("<>"));
    // The trace says the client authenticated (ESMTPA), never who it is.
    let trace = m[0].trace.clone().expect("trace header");
    assert!(trace.contains("with ESMTPA id "), "{trace}");
    assert!(!trace.contains("alice"), "{trace}");
}

#[test]
fn routing_forms_from_clients_that_may_not_relay_never_reach_the_backend() {
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        "[tarpit]\nsuspicious_delay = \"0s\"\n\
         [relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.9/32\"]\n",
        &[recorder.addr],
    );
    let forms = [
        "user%elsewhere.org@example.com",
        "elsewhere.org!user@example.com",
        "\"user@elsewhere.org\"@example.com",
    ];
    let (mut outsider, _) = Client::connect_from(attitude.smtp, "127.0.0.2".parse().unwrap());
    outsider.cmd("EHLO outsider.test");
    for form in forms {
        assert!(
            outsider
                .cmd("MAIL FROM:<a@elsewhere.org>")
                .starts_with("250")
        );
        let got = outsider.cmd(&format!("RCPT TO:<{form}>"));
        assert!(got.starts_with("554 5.7.1"), "{form}: {got}");
        assert!(outsider.cmd("RSET").starts_with("250"));
    }
    // A plain local recipient still passes; nothing of the routing forms reached the backend.
    let (mut trusted, _) = Client::connect_from(attitude.smtp, "127.0.0.9".parse().unwrap());
    trusted.cmd("EHLO trusted.test");
    for form in forms {
        assert!(trusted.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
        let got = trusted.cmd(&format!("RCPT TO:<{form}>"));
        assert!(got.starts_with("250"), "trusted, {form}: {got}");
        assert!(trusted.cmd("DATA").starts_with("354"));
        trusted.send(b"Subject: routed\r\n\r\nhi\r\n.\r\n");
        assert!(trusted.reply().starts_with("250"));
    }
    let m = recorder.messages();
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|m| m.mail_from == "a@example.org"), "{m:?}");
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"relay\",action=\"reject\"}"),
        Some(3.0)
    );
}

#[test]
fn xforward_tells_postfix_who_the_client_was() {
    let postfix = Postfix::start_with("smtpd_authorized_xforward_hosts = 127.0.0.0/8\n");
    // The backend list goes in the same [backend] table as the identity.
    let attitude = Attitude::start(
        &format!(
            "[backend]\nidentity = \"xforward\"\nservers = [\"{}\"]\n",
            postfix.held
        ),
        &[],
    );
    ready(&attitude);
    let (mut c, _) = Client::connect_from(attitude.smtp, "127.0.0.5".parse().unwrap());
    assert!(c.cmd("EHLO real-client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: forwarded\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let held = postfix.wait_held(1);
    assert_eq!(held.len(), 1);
    for record in [
        "named_attribute: log_client_address=127.0.0.5",
        "named_attribute: log_helo_name=real-client.test",
        "named_attribute: log_protocol_name=ESMTP",
    ] {
        assert!(held[0].contains(record), "{record} in\n{}", held[0]);
    }
    // The client is attitude's (XFORWARD is for logging, not for authorisation).
    assert!(
        held[0].contains("named_attribute: client_address=127.0.0.1"),
        "{}",
        held[0]
    );
}
