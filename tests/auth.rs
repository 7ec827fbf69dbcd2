//! AUTH relayed to a real backend (aiosmtpd with accounts), the brute-force guard, and the
//! submission-style requirement.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use attitude_test_support::{Attitude, Client, Recorder, require_tool, wait_for};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn plain(user: &str, password: &str) -> String {
    b64(&format!("\0{user}\0{password}"))
}

// The relay attempt before AUTH would mark the client suspicious: no tarpit delay here.
const CONFIG: &str = "[relay]\nlocal_domains = [\"example.com\"]\ntrusted_networks = []\n\
    [tarpit]\nsuspicious_delay = \"0s\"\n\
    [auth]\nenabled = true\nallow_plaintext = true\nfailure_delay = \"100ms\"\n\
    max_failures_per_client = 3\nmax_failures_per_login = 4\n";

/// Starts attitude and waits until its startup probe has learnt the backend's AUTH.
fn start(config: &str, recorder: &Recorder) -> Attitude {
    let attitude = Attitude::start(config, &[recorder.addr]);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (mut c, _) = Client::connect_from(attitude.smtp, ip(9));
            let ehlo = c.cmd("EHLO probe.test");
            c.cmd("QUIT");
            ehlo.contains("AUTH PLAIN LOGIN")
        }),
        "AUTH never offered"
    );
    attitude
}

#[test]
fn auth_is_relayed_and_an_authenticated_client_may_relay() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = start(CONFIG, &recorder);
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(c.cmd("EHLO client.test").contains("AUTH PLAIN LOGIN"));
    assert!(c.cmd("MAIL FROM:<alice@elsewhere.org>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<x@elsewhere.org>").starts_with("554 5.7.1"),
        "not yet"
    );
    assert!(c.cmd("RSET").starts_with("250"));
    let r = c.cmd("AUTH CRAM-MD5");
    assert!(r.starts_with("504 5.5.4"), "{r}");
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")));
    assert!(r.starts_with("235"), "the backend's verdict: {r}");
    assert!(c.cmd("AUTH PLAIN x").starts_with("503"), "once per session");
    c.start_data_after_ehlo("alice@elsewhere.org", &["x@elsewhere.org"]);
    c.send(b"Subject: auth\r\n\r\nrelayed\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = recorder.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].login.as_deref(),
        Some("alice"),
        "the backend session is authenticated"
    );

    // A real client: swaks with AUTH LOGIN (challenge and response lines).
    let out = Command::new(require_tool("swaks"))
        .args(["--server", &attitude.smtp.to_string()])
        .args(["--from", "alice@elsewhere.org", "--to", "y@elsewhere.org"])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(transcript.contains("<-  235"), "{transcript}");
    assert_eq!(recorder.messages().len(), 2);
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"auth\",action=\"allow\"}"),
        Some(2.0)
    );
}

#[test]
fn failures_are_delayed_then_the_client_and_the_login_are_banned() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = start(CONFIG, &recorder);
    // One client guessing: two failures (535, each after the delay), the third bans it.
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(c.cmd("EHLO guesser.test").starts_with("250"));
    for guess in ["a", "b"] {
        let started = Instant::now();
        let r = c.cmd(&format!("AUTH PLAIN {}", plain("bob", guess)));
        assert!(r.starts_with("535"), "{r}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("bob", "c")));
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.is_closed());
    // Banned: refused at once, even with the right password.
    let (mut again, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(again.cmd("EHLO guesser.test").starts_with("250"));
    let r = again.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")));
    assert!(r.starts_with("421 4.7.0"), "{r}");

    // A distributed guess on one login: one failure from each of four addresses, each with
    // another spelling (the backend takes any case; so does the count).
    for (last, spelling) in [(3, "alice"), (4, "Alice"), (5, " ALICE ")] {
        let (mut c, _) = Client::connect_from(attitude.smtp, ip(last));
        assert!(c.cmd("EHLO botnet.test").starts_with("250"));
        assert!(c.cmd("AUTH LOGIN").starts_with("334"));
        assert!(c.cmd(&b64(spelling)).starts_with("334"));
        assert!(c.cmd(&b64("wrong")).starts_with("535"));
    }
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(6));
    assert!(c.cmd("EHLO botnet.test").starts_with("250"));
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", plain("aLiCe", "wrong")))
            .starts_with("421 4.7.0")
    );
    // The login stays banned for a while, whoever asks, however it is spelt.
    for (last, spelling) in [(7, "alice"), (8, "ALICE")] {
        let (mut c, _) = Client::connect_from(attitude.smtp, ip(last));
        assert!(c.cmd("EHLO owner.test").starts_with("250"));
        assert!(c.cmd("AUTH LOGIN").starts_with("334"));
        assert!(c.cmd(&b64(spelling)).starts_with("421 4.7.0"), "{spelling}");
    }
    assert_eq!(
        attitude.metric("attitude_auth_bans_total{key=\"client\"}"),
        Some(1.0)
    );
    assert_eq!(
        attitude.metric("attitude_auth_bans_total{key=\"login\"}"),
        Some(1.0)
    );
    assert!(recorder.messages().is_empty());
}

#[test]
fn an_over_long_answer_cancels_the_exchange_and_the_next_command_is_a_command() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = start(CONFIG, &recorder);
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(c.cmd("EHLO long.test").starts_with("250"));
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    let r = c.cmd(&"A".repeat(20_000));
    assert!(r.starts_with("501 5.5.2"), "{r}");
    // Not an answer in the exchange (it would be the password): a command, relayed as one.
    assert!(c.cmd("MAIL FROM:<a@sender.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: after a cancelled AUTH\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(recorder.messages().len(), 1);
}

#[test]
fn not_offered_over_plaintext_unless_allowed_and_required_when_asked() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = Attitude::start("[auth]\nenabled = true\n", &[recorder.addr]);
    // Give the probe time: AUTH must still not be offered without TLS.
    std::thread::sleep(Duration::from_millis(500));
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(!c.cmd("EHLO client.test").contains("AUTH"));
    assert!(c.cmd("AUTH PLAIN x").starts_with("502"));

    let required = start(&format!("{CONFIG}require = true\n"), &recorder);
    let (mut c, _) = Client::connect_from(required.smtp, ip(2));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<a@example.com>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
            .starts_with("235")
    );
    assert!(c.cmd("MAIL FROM:<alice@example.com>").starts_with("250"));
}

#[test]
fn dry_run_counts_bans_and_refuses_nothing() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let attitude = start(&format!("{CONFIG}mode = \"dry-run\"\n"), &recorder);
    let (mut c, _) = Client::connect_from(attitude.smtp, ip(2));
    assert!(c.cmd("EHLO guesser.test").starts_with("250"));
    for guess in ["a", "b", "c", "d"] {
        let r = c.cmd(&format!("AUTH PLAIN {}", plain("bob", guess)));
        assert!(r.starts_with("535"), "{guess}: {r}");
    }
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")));
    assert!(r.starts_with("235"), "{r}");
    // The network would be banned at the third failure, the login "bob" at the fourth.
    assert_eq!(
        attitude.metric("attitude_policy_decisions_total{policy=\"auth\",action=\"would_reject\"}"),
        Some(2.0)
    );
    assert_eq!(
        attitude.metric("attitude_auth_bans_total{key=\"client\"}"),
        Some(0.0)
    );
}

#[test]
fn failures_on_two_listeners_count_together_and_a_reload_keeps_the_ban() {
    let recorder = Recorder::start_with_accounts(&[("alice", "secret")]);
    let config = format!(
        "{CONFIG}[[listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\n"
    );
    let attitude = start(&config, &recorder);
    let other = attitude.listener("other");
    let guess = |addr, password: &str| {
        let (mut c, _) = Client::connect_from(addr, ip(2));
        assert!(c.cmd("EHLO guesser.test").starts_with("250"));
        let r = c.cmd(&format!("AUTH PLAIN {}", plain("bob", password)));
        if !r.starts_with("421") {
            c.cmd("QUIT");
        }
        r
    };
    // Two failures on one listener, the third on the other: the limit of 3 is the process's.
    assert!(guess(attitude.smtp, "a").starts_with("535"));
    assert!(guess(attitude.smtp, "b").starts_with("535"));
    assert!(guess(other, "c").starts_with("421 4.7.0"));
    assert!(guess(attitude.smtp, "secret").starts_with("421 4.7.0"));
    // A reload (another failure delay) builds new stacks; the ban stays.
    attitude.reload("failure_delay = \"100ms\"", "failure_delay = \"200ms\"");
    let r = guess(other, "secret");
    assert!(r.starts_with("421 4.7.0"), "after the reload: {r}");
    assert_eq!(
        attitude.metric("attitude_auth_bans_total{key=\"client\"}"),
        Some(1.0)
    );
}
