//! attitude under systemd: the notification protocol (`Type=notify`) against a real unix
//! datagram socket, the shipped unit checked by `systemd-analyze verify`, the shipped
//! configuration's safety, and the generated manual pages read by `man`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use attitude_test_support::{
    Attitude, Recorder, attitude_bin, free_port, require_tool, run, scratch_dir,
};

/// The first line a connection to `addr` reads (the greeting), if it connects.
fn greeting(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line)
}

/// A notification as systemd receives it, and, for `READY=1`, the greeting the SMTP port gave
/// the moment it arrived.
#[derive(Debug)]
struct Notification {
    text: String,
    greeting_at_ready: Option<String>,
}

/// Receives every datagram on `socket` until it is quiet for 30 s; on each `READY=1` connects
/// to `smtp` at once.
fn receive(socket: UnixDatagram, smtp: SocketAddr) -> mpsc::Receiver<Notification> {
    let (tx, rx) = mpsc::channel();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let greeting_at_ready = text
                .lines()
                .any(|l| l == "READY=1")
                .then(|| greeting(smtp).unwrap_or_default());
            if tx
                .send(Notification {
                    text,
                    greeting_at_ready,
                })
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The next notification with a line `line`, skipping `STATUS=`-only updates.
fn next_with(rx: &mpsc::Receiver<Notification>, line: &str) -> Notification {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(n) = rx.recv_timeout(left) else { break };
        if n.text.lines().any(|l| l == line) {
            return n;
        }
        assert!(
            n.text.lines().all(|l| l.starts_with("STATUS=")),
            "expected {line}, got {:?} (after {seen:?})",
            n.text
        );
        seen.push(n.text);
    }
    panic!("no {line} within 15 s (got {seen:?})");
}

#[test]
fn systemd_hears_ready_once_the_port_accepts_then_reloading_ready_and_stopping() {
    let backend = Recorder::start();
    let dir = scratch_dir("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rx = receive(socket, smtp);
    let mut attitude = Attitude::start_with_env(
        &format!("listen = \"{smtp}\"\n[timeouts]\ndrain_delay = \"0s\"\n"),
        &[backend.addr],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );

    let ready = next_with(&rx, "READY=1");
    let greeting = ready.greeting_at_ready.as_deref().unwrap_or_default();
    assert!(
        greeting.starts_with("220 "),
        "READY=1 came before the SMTP port served a greeting: {greeting:?}"
    );
    assert!(
        ready
            .text
            .contains("STATUS=serving: 0 sessions, 1 of 1 backends up"),
        "{:?}",
        ready.text
    );

    attitude.peer.signal("HUP");
    let reloading = next_with(&rx, "RELOADING=1");
    assert!(
        reloading.text.contains("MONOTONIC_USEC="),
        "RELOADING=1 carries MONOTONIC_USEC (Type=notify-reload needs it): {:?}",
        reloading.text
    );
    next_with(&rx, "READY=1");

    attitude.peer.signal("TERM");
    let stopping = next_with(&rx, "STOPPING=1");
    assert!(
        stopping.text.contains("STATUS=draining"),
        "{:?}",
        stopping.text
    );
    let status = attitude.peer.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "attitude did not stop cleanly: {status:?}"
    );
}

#[test]
fn without_notify_socket_nothing_is_sent_and_attitude_serves() {
    // The other tests start attitude without NOTIFY_SOCKET; this one says why that is enough:
    // the announcement and a greeting, no warning about the service manager.
    let backend = Recorder::start();
    let attitude = Attitude::start("", &[backend.addr]);
    assert!(
        greeting(attitude.smtp)
            .unwrap_or_default()
            .starts_with("220 ")
    );
    assert!(
        !attitude
            .peer
            .stderr()
            .iter()
            .any(|l| l.contains("NOTIFY_SOCKET")),
        "{:?}",
        attitude.peer.stderr()
    );
}

/// `systemd-analyze verify` on `unit`: its exit status and everything it printed (it exits 0
/// on settings it ignores, so the output must be empty too).
fn verify(unit: &Path, man: bool) -> (bool, String) {
    run(Command::new(require_tool("systemd-analyze"))
        .arg("verify")
        .arg(format!("--man={}", if man { "yes" } else { "no" }))
        .arg(unit))
}

/// A file of `deploy/debian/`.
fn debian(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/debian")
        .join(name)
}

/// The repository's unit with `/usr/bin/attitude` replaced by the binary under test.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(debian("attitude.service"))
        .expect("read deploy/debian/attitude.service");
    let path = dir.join("attitude.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/attitude", &attitude_bin().display().to_string()),
    )
    .expect("write unit");
    path
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    let dir = scratch_dir("unit");
    // The man page is checked where it is installed (the package test).
    let (ok, text) = verify(&unit_for_this_build(&dir), false);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // The check would see a mistake: a misspelt setting is reported.
    let unit = std::fs::read_to_string(dir.join("attitude.service")).unwrap();
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("attitude.service"),
        unit.replace("Type=notify", "Type=notifyy"),
    )
    .unwrap();
    let (_, text) = verify(&broken.join("attitude.service"), false);
    assert!(text.contains("notifyy"), "a broken unit passed: {text:?}");
}

#[test]
fn the_unit_waits_longer_than_the_drain_and_checks_the_file_first() {
    let unit = std::fs::read_to_string(debian("attitude.service")).unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(value("Type"), ["notify"]);
    let stop: u64 = value("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    // What the shipped configuration drains for (defaults: drain_delay 5 s, drain_grace 30 s)
    // plus the 5 s attitude gives the last 421s.
    let effective = check_config(&shipped_config());
    let secs = |key: &str| -> u64 {
        effective
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|v| v.trim_end_matches("s\"").parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the effective configuration"))
    };
    assert!(
        stop > secs("drain_delay") + secs("drain_grace") + 5,
        "TimeoutStopSec={stop}s does not cover the drain"
    );
    assert_eq!(
        value("ExecStartPre"),
        ["/usr/bin/attitude check-config --quiet /etc/attitude/attitude.toml"]
    );
    let reload = value("ExecReload");
    assert_eq!(reload.len(), 2, "{reload:?}");
    assert!(reload[0].contains("check-config") && reload[1].contains("-HUP $MAINPID"));
}

fn shipped_config() -> PathBuf {
    debian("attitude.toml")
}

/// `attitude check-config FILE`: the effective configuration it prints (panics if refused).
fn check_config(file: &Path) -> String {
    let out = Command::new(attitude_bin())
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run attitude check-config");
    assert!(
        out.status.success(),
        "check-config refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_shipped_configuration_trusts_only_loopback_and_names_no_domain() {
    let effective = check_config(&shipped_config());
    let line = |key: &str| -> Vec<&str> {
        effective
            .lines()
            .filter(|l| l.starts_with(&format!("{key} = ")))
            .collect()
    };
    // Every network list in the effective configuration holds loopback only.
    for key in ["trusted_networks", "exempt_networks"] {
        for l in line(key) {
            assert_eq!(*l, format!("{key} = [\"127.0.0.0/8\", \"::1/128\"]"));
        }
    }
    assert!(!line("trusted_networks").is_empty());
    assert_eq!(line("local_domains"), ["local_domains = []"]);
    assert_eq!(line("admin"), ["admin = \"127.0.0.1:9325\""]);
    assert!(
        effective.contains(
            "[[listeners]]\nname = \"smtp\"\naddress = [\"127.0.0.1:2525\", \"[::1]:2525\"]\n"
        ),
        "the one listener, on loopback:\n{effective}"
    );
    assert_eq!(effective.matches("[[listeners]]").count(), 1);
    assert_eq!(line("servers"), ["servers = [\"127.0.0.1:25\"]"]);
    // --quiet (the unit's ExecStartPre) validates and prints nothing.
    let out = Command::new(attitude_bin())
        .args(["check-config", "--quiet"])
        .arg(shipped_config())
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}

/// `man`'s output to a pipe without its overstrike ("N\x08N" for a bold N).
fn without_overstrike(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn generate_writes_man_pages_that_man_reads_and_completions_for_three_shells() {
    let dir = scratch_dir("generate");
    let out = Command::new(attitude_bin())
        .arg("generate")
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "attitude",
        "attitude-serve",
        "attitude-check-config",
        "attitude-sink",
    ] {
        let path = dir.join("man").join(format!("{page}.8"));
        let man = Command::new(require_tool("man"))
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "100")
            .output()
            .expect("run man");
        let text = without_overstrike(&String::from_utf8_lossy(&man.stdout));
        assert!(
            man.status.success() && text.contains("NAME"),
            "{page}: {man:?}"
        );
        if page == "attitude-serve" {
            // Every flag of `serve`, with the environment variable that sets it.
            for flag in [
                "--config",
                "--listen",
                "--backend",
                "--tls-cert",
                "ATTITUDE_BACKEND",
            ] {
                assert!(text.contains(flag), "{flag} missing from attitude-serve(8)");
            }
        }
        if page == "attitude" {
            for section in ["FILES", "SIGNALS", "SIGHUP", "/etc/attitude/attitude.toml"] {
                assert!(text.contains(section), "{section} missing from attitude(8)");
            }
        }
    }
    let bash = std::fs::read_to_string(dir.join("completions/attitude.bash")).unwrap();
    assert!(bash.contains("check-config") && bash.contains("--backend"));
    // bash itself parses the completion script.
    let status = Command::new("bash")
        .arg("-n")
        .arg(dir.join("completions/attitude.bash"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.join("completions/_attitude").exists());
    assert!(dir.join("completions/attitude.fish").exists());
}
