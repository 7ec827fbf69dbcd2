//! TLS: STARTTLS with real clients (swaks, smtplib), implicit TLS (smtplib's SMTP_SSL), the
//! STARTTLS injection guard, TLS to a backend (aiosmtpd), and the certificate rotated on disk.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use attitude_test_support::{
    Attitude, Client, Recorder, TestCa, require_tool, run, scratch_dir, tls_client,
    tls_client_command, wait_for,
};

/// A message with dot-stuffing, 8-bit text and a 998-octet line.
fn message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: alice@example.org\r\nTo: bob@example.com\r\n");
    m.extend_from_slice("Subject: über TLS\r\n\r\n".as_bytes());
    m.extend_from_slice(b"first line\r\n.\r\n..\r\n.leading dot\r\n");
    m.extend_from_slice("ünïcödé ✓\r\n".as_bytes());
    m.extend_from_slice(&[b'L'; 998]);
    m.extend_from_slice(b"\r\nlast line\r\n");
    m
}

/// A CA, and a server certificate with common name `first` in `dir`.
struct Certs {
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

fn certs(name: &str) -> Certs {
    let dir = scratch_dir(name);
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = TestCa::new(&dir);
    let (cert, key) = (tls.join("tls.crt"), tls.join("tls.key"));
    ca.issue("first", &cert, &key);
    Certs { ca, cert, key, dir }
}

/// Writes a certificate with common name `cn` the way the kubelet updates a mounted Secret:
/// the files go into a new `..VERSION` directory, the `..data` symlink is swapped to it in one
/// rename, and `tls.crt`/`tls.key` are symlinks through `..data` (so the files attitude was given
/// never change; only a symlink in their directory does).
/// `broken` writes a key that does not parse.
fn kubelet_secret(c: &Certs, dir: &Path, version: &str, cn: &str, broken: bool) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    c.ca.issue(cn, &data.join("tls.crt"), &data.join("tls.key"));
    if broken {
        std::fs::write(data.join("tls.key"), "not a key\n").unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

fn tls_config(c: &Certs) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    )
}

fn write_message(dir: &Path) -> PathBuf {
    let file = dir.join("message.eml");
    std::fs::write(&file, message()).unwrap();
    file
}

#[test]
fn starttls_with_swaks_and_smtplib_relays_byte_exact() {
    let c = certs("starttls");
    let recorder = Recorder::start();
    let attitude = Attitude::start(&tls_config(&c), &[recorder.addr]);
    let file = write_message(&c.dir);

    let (ok, out) = tls_client(
        "starttls",
        attitude.smtp,
        &c.ca.ca_file,
        "alice@example.org",
        "bob@example.com",
        &file,
    );
    assert!(ok, "{out}");
    assert!(out.contains("tls TLSv1.3"), "{out}");
    assert!(out.contains("cn first"), "{out}");

    let swaks = Command::new(require_tool("swaks"))
        .args(["--server", &attitude.smtp.to_string(), "--tls"])
        .args(["--from", "carol@example.org", "--to", "dave@example.com"])
        .args(["--helo", "swaks.test", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert!(transcript.contains("TLS started"), "{transcript}");

    let m = recorder.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0].content,
        message(),
        "smtplib's message changed on the way"
    );
    // attitude's trace header says the session was in TLS (ESMTPS, version and cipher), and
    // Python's email package reads it as one Received header with its date.
    let trace = m[0].trace.clone().expect("attitude's Received header");
    let (parsed_ok, parsed) =
        attitude_test_support::run(attitude_test_support::python_peer("received.py").arg(&trace));
    assert!(parsed_ok, "{parsed}");
    assert!(parsed.contains("with ESMTPS id "), "{parsed}");
    assert!(
        parsed.contains("(using TLSv1.3 with cipher TLS13_"),
        "{parsed}"
    );
    assert!(
        m[1].content.starts_with(&message()),
        "swaks's message changed on the way"
    );
    assert_eq!(m[1].rcpt_tos, ["dave@example.com"]);
    // The session log and the metrics say what TLS negotiated.
    assert!(wait_for(Duration::from_secs(5), || {
        attitude
            .peer
            .stderr()
            .iter()
            .filter(|l| l.contains("session end") && l.contains("tls=TLSv1_3"))
            .count()
            >= 2
    }));
    let (_, metrics) = attitude.http_get("/metrics");
    assert!(
        metrics.contains("attitude_tls_sessions_total{version=\"TLSv1_3\""),
        "{metrics}"
    );
    assert!(metrics.contains("attitude_tls_certificate_expiry_timestamp_seconds"));
}

#[test]
fn starttls_is_offered_only_with_a_certificate_and_only_once() {
    let c = certs("offer");
    let recorder = Recorder::start();
    let plain = Attitude::start("", &[recorder.addr]);
    let mut client = Client::connect(plain.smtp);
    let ehlo = client.cmd("EHLO plain.test");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let r = client.cmd("STARTTLS");
    assert!(r.starts_with("502"), "{r}");

    let with_cert = Attitude::start(&tls_config(&c), &[recorder.addr]);
    let mut client = Client::connect(with_cert.smtp);
    let ehlo = client.cmd("EHLO tls.test");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    // Not inside a transaction.
    assert!(client.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let r = client.cmd("STARTTLS");
    assert!(r.starts_with("503"), "{r}");
}

#[test]
fn commands_pipelined_after_starttls_never_run() {
    let c = certs("injection");
    let recorder = Recorder::start();
    let attitude = Attitude::start(&tls_config(&c), &[recorder.addr]);
    let mut client = Client::connect(attitude.smtp);
    assert!(client.cmd("EHLO victim.test").contains("STARTTLS"));
    // What a man in the middle appends to the client's STARTTLS, in the same packet.
    client.send(
        b"STARTTLS\r\nMAIL FROM:<mallory@example.org>\r\nRCPT TO:<bob@example.com>\r\n\
          DATA\r\nSubject: injected\r\n\r\nforged\r\n.\r\nQUIT\r\n",
    );
    let r = client.reply();
    assert!(
        r.starts_with("554 5.5.1") && r.contains("STARTTLS"),
        "the upgrade is refused: {r}"
    );
    assert!(client.try_reply().is_none(), "nothing else is answered");
    assert!(client.is_closed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(recorder.messages().is_empty(), "nothing was relayed");
    assert_eq!(
        attitude.metric("attitude_starttls_injection_total"),
        Some(1.0)
    );
}

#[test]
fn listeners_implicit_tls_and_their_own_policies() {
    let c = certs("listeners");
    let recorder = Recorder::start();
    let config = format!(
        "{}\n\
         [[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         policy.smtp.require_tls = true\npolicy.limits.max_recipients = 1\n\
         [[listeners]]\nname = \"submissions\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        tls_config(&c)
    );
    let attitude = Attitude::start(&config, &[recorder.addr]);
    let file = write_message(&c.dir);

    // 465: TLS from the first byte.
    let (ok, out) = tls_client(
        "ssl",
        attitude.listener("submissions"),
        &c.ca.ca_file,
        "alice@example.org",
        "bob@example.com",
        &file,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("tls TLSv1.3") && out.contains("cn first"),
        "{out}"
    );
    // A client speaking plain SMTP there fails the handshake and is closed, counted.
    let mut plain = Client::connect_raw(attitude.listener("submissions"));
    plain.send(b"EHLO plain.test\r\n");
    assert!(plain.is_closed());
    assert!(wait_for(Duration::from_secs(5), || attitude
        .metric("attitude_tls_handshake_failures_total")
        == Some(1.0)));
    assert_eq!(
        attitude.metric("attitude_sessions_ended_total{result=\"io_error\"}"),
        Some(1.0)
    );

    // 587 here requires STARTTLS before MAIL and takes one recipient; 25 does neither.
    let mut sub = Client::connect(attitude.listener("submission"));
    sub.cmd("EHLO client.test");
    let r = sub.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    let mut mx = Client::connect(attitude.listener("mx"));
    mx.cmd("EHLO client.test");
    assert!(mx.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(mx.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    assert!(mx.cmd("RCPT TO:<c@example.com>").starts_with("250"));
    let (ok, out) = tls_client(
        "starttls",
        attitude.listener("submission"),
        &c.ca.ca_file,
        "alice@example.org",
        "bob@example.com,carol@example.com",
        &file,
    );
    assert!(
        out.contains("carol@example.com") && out.contains("452"),
        "the second recipient is over this listener's limit: {out}"
    );
    assert!(ok, "{out}");
    let m = recorder.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].rcpt_tos, ["bob@example.com"]);
    assert_eq!(m[0].content, message());
}

#[test]
fn backend_over_starttls_verified_against_a_ca() {
    let c = certs("backend-tls");
    let (bcert, bkey) = (c.dir.join("backend.crt"), c.dir.join("backend.key"));
    c.ca.issue("backend", &bcert, &bkey);
    let recorder = Recorder::start_args(&[
        "--tls-cert",
        bcert.to_str().unwrap(),
        "--tls-key",
        bkey.to_str().unwrap(),
    ]);
    let attitude = Attitude::start(
        &format!(
            "[backend.tls]\nmode = \"starttls\"\nca_file = \"{}\"\nserver_name = \"attitude.test\"\n",
            c.ca.ca_file.display()
        ),
        &[recorder.addr],
    );
    let mut client = Client::connect(attitude.smtp);
    client.start_data("alice@example.org", &["bob@example.com"]);
    client.send(b"Subject: to a TLS backend\r\n\r\nhello\r\n.\r\n");
    let r = client.reply();
    assert!(r.starts_with("250"), "{r}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert!(
        m[0].tls
            .as_deref()
            .is_some_and(|t| t.starts_with("TLSv1.3")),
        "{:?}",
        m[0].tls
    );

    // A backend whose certificate the CA did not sign is never sent mail.
    let stranger = TestCa::new(&scratch_dir("stranger-ca"));
    let untrusting = Attitude::start(
        &format!(
            "[backend.tls]\nmode = \"starttls\"\nca_file = \"{}\"\n",
            stranger.ca_file.display()
        ),
        &[recorder.addr],
    );
    let mut client = Client::connect_raw(untrusting.smtp);
    let greeting = client.reply();
    let refused = if greeting.starts_with("220") {
        client.cmd("EHLO client.test");
        client.cmd("MAIL FROM:<alice@example.org>")
    } else {
        greeting
    };
    assert!(refused.starts_with('4'), "{refused}");
    assert_eq!(recorder.messages().len(), 1);

    // The lab setting takes any certificate (and still encrypts).
    let lab = Attitude::start(
        "[backend.tls]\nmode = \"starttls\"\ninsecure_skip_verify = true\n",
        &[recorder.addr],
    );
    let mut client = Client::connect(lab.smtp);
    client.start_data("alice@example.org", &["bob@example.com"]);
    client.send(b"Subject: lab\r\n\r\nhello\r\n.\r\n");
    assert!(client.reply().starts_with("250"));
    let m = recorder.messages();
    assert_eq!(m.len(), 2);
    assert!(
        m[1].tls
            .as_deref()
            .is_some_and(|t| t.starts_with("TLSv1.3"))
    );
}

#[test]
fn a_rotated_certificate_serves_new_sessions_while_old_ones_go_on() {
    let c = certs("rotation");
    let secret = c.dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    kubelet_secret(&c, &secret, "v1", "first", false);
    let recorder = Recorder::start();
    let attitude = Attitude::start(
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            secret.join("tls.crt").display(),
            secret.join("tls.key").display()
        ),
        &[recorder.addr],
    );
    let file = write_message(&c.dir);
    // A session that is in TLS before the rotation and sends its message after it.
    let mut held = tls_client_command(
        "hold",
        attitude.smtp,
        &c.ca.ca_file,
        "held@example.org",
        "bob@example.com",
        &file,
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("cn ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "held client ended");
    }
    assert_eq!(line.trim(), "cn first");

    kubelet_secret(&c, &secret, "v2", "second", false);
    assert!(
        wait_for(Duration::from_secs(10), || attitude
            .metric("attitude_tls_certificate_reload_total{result=\"ok\"}")
            == Some(1.0)),
        "the new pair was picked up"
    );
    let (ok, text) = tls_client("cert", attitude.smtp, &c.ca.ca_file, "-", "-", &file);
    assert!(ok && text.contains("cn second"), "{text}");

    // A broken pair is refused and the last good one stays.
    kubelet_secret(&c, &secret, "v3", "third", true);
    assert!(wait_for(Duration::from_secs(10), || attitude
        .metric("attitude_tls_certificate_reload_total{result=\"error\"}")
        .is_some_and(|n| n >= 1.0)));
    let (ok, text) = tls_client("cert", attitude.smtp, &c.ca.ca_file, "-", "-", &file);
    assert!(ok && text.contains("cn second"), "{text}");

    // The session from before the rotation finishes its message.
    held.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = held.wait().unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("250 accepted"), "{rest}");
    assert_eq!(recorder.messages().len(), 1);
    assert!(
        attitude
            .peer
            .stderr()
            .iter()
            .any(|l| l.contains("TLS certificate reloaded"))
    );
}

#[test]
fn tls_configuration_errors_say_what_to_fix() {
    let err = attitude_test_support::config_error("[tls]\ncert = \"/nonexistent.crt\"\n");
    assert!(err.contains("cert and key go together"), "{err}");
    let err = attitude_test_support::config_error(
        "[[listeners]]\nname = \"smtps\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
    );
    assert!(err.contains("needs a certificate"), "{err}");
    let err = attitude_test_support::config_error(
        "[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\npolicy.backend.servers = []\n",
    );
    assert!(err.contains("cannot differ per listener"), "{err}");
}

#[test]
fn tls_cert_and_key_flags_turn_starttls_on() {
    let c = certs("flags");
    let recorder = Recorder::start();
    let mut cmd = Command::new(attitude_test_support::attitude_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin", "off"])
        .arg("--backend")
        .arg(recorder.addr.to_string())
        .arg("--tls-cert")
        .arg(&c.cert)
        .arg("--tls-key")
        .arg(&c.key);
    let (_peer, pairs) = attitude_test_support::Peer::spawn_announced("attitude", cmd);
    let smtp = attitude_test_support::addr_of(&pairs, "smtp").unwrap();
    let file = write_message(&c.dir);
    let (ok, out) = tls_client(
        "starttls",
        smtp,
        &c.ca.ca_file,
        "alice@example.org",
        "bob@example.com",
        &file,
    );
    assert!(ok, "{out}");
    assert!(out.contains("cn first"), "{out}");
    assert_eq!(recorder.messages().len(), 1);
}

#[test]
fn auth_is_offered_only_inside_tls_and_works_there() {
    let c = certs("auth-tls");
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = Attitude::start(
        &(tls_config(&c) + "[auth]\nenabled = true\nrequire = true\n"),
        &[recorder.addr],
    );
    let mut plain = Client::connect(attitude.smtp);
    let ehlo = plain.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        plain
            .cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
            .starts_with("502")
    );
    assert!(
        plain
            .cmd("MAIL FROM:<alice@example.org>")
            .starts_with("530")
    );

    let file = write_message(&c.dir);
    let (ok, text) = run(tls_client_command(
        "starttls",
        attitude.smtp,
        &c.ca.ca_file,
        "alice@example.org",
        "someone@elsewhere.example",
        &file,
    )
    .env("LOGIN", "alice:secret"));
    assert!(ok, "{text}");
    assert!(text.contains("auth before: -"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("auth after:") && l.contains("PLAIN LOGIN")),
        "{text}"
    );
    assert!(text.contains("authenticated as alice"), "{text}");
    let m = recorder.messages();
    assert_eq!(m.len(), 1, "an authenticated client relays anywhere");
    assert_eq!(m[0].login.as_deref(), Some("alice"));
}
