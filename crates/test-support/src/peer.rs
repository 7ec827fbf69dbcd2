//! Real peers as child processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory under the system temp dir, unique to this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("attitude-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A loopback port that was free a moment ago (for peers that cannot bind port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Panics with the fix when a tool the tests need is missing (tests never skip silently).
pub fn require_tool(path: &str) -> PathBuf {
    let found = if path.contains('/') {
        Path::new(path).exists().then(|| PathBuf::from(path))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(path))
                .find(|p| p.exists())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "{path} is not installed: run `make deps` (installs postfix, swaks, python3-aiosmtpd)"
        )
    })
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `attitude` binary: `$ATTITUDE_BIN`, or `target/<profile>/attitude` next to the test.
pub fn attitude_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ATTITUDE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/attitude
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let bin = profile_dir.join("attitude");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p attitude`; `make test` does)",
        bin.display()
    );
    bin
}

/// A child process, killed (by PID) and reaped when dropped.
pub struct Peer {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

impl Peer {
    /// Starts `cmd` with its output captured line by line; lines starting with `listening ` are
    /// also sent on the returned channel.
    fn start(name: &str, mut cmd: Command) -> (Peer, mpsc::Receiver<String>) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipes: [(Box<dyn Read + Send>, _); 2] = [
            (
                Box::new(child.stdout.take().expect("stdout")),
                stdout.clone(),
            ),
            (
                Box::new(child.stderr.take().expect("stderr")),
                stderr.clone(),
            ),
        ];
        for (pipe, lines) in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if line.starts_with("listening ") {
                        let _ = tx.send(line.clone());
                    }
                    lines.lock().expect("lock").push(line);
                }
            });
        }
        let peer = Peer {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        };
        (peer, rx)
    }

    /// Starts `cmd` and waits for a line starting with `listening `; returns the peer and that
    /// line's `key=value` pairs.
    pub fn spawn_announced(name: &str, cmd: Command) -> (Peer, Vec<(String, String)>) {
        let (peer, rx) = Self::start(name, cmd);
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => panic!(
                "{name} did not announce its address; stderr:\n{}",
                peer.stderr().join("\n")
            ),
        };
        let pairs = line
            .trim_start_matches("listening ")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (peer, pairs)
    }

    /// Starts `cmd`, then waits until `addr` accepts connections.
    pub fn spawn_listening(name: &str, cmd: Command, addr: SocketAddr) -> Peer {
        Self::spawn_listening_within(name, cmd, addr, Duration::from_secs(20))
    }

    /// [`Peer::spawn_listening`] for a peer that takes up to `limit` to listen.
    pub fn spawn_listening_within(
        name: &str,
        cmd: Command,
        addr: SocketAddr,
        limit: Duration,
    ) -> Peer {
        let (mut peer, _) = Self::start(name, cmd);
        let up = wait_for(limit, || {
            TcpStream::connect(addr).is_ok() || peer.child.try_wait().ok().flatten().is_some()
        });
        if !up || peer.child.try_wait().ok().flatten().is_some() {
            panic!(
                "{name} did not start on {addr}; stderr:\n{}",
                peer.stderr().join("\n")
            );
        }
        peer
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "TERM", "KILL") to this process only.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines written to stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// Lines written to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on a loopback server (the admin server, Prometheus): (status, body).
/// HTTP/1.0, so that no server answers with a chunked body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The address announced as `key` (`listening smtp=... admin=...`).
pub fn addr_of(pairs: &[(String, String)], key: &str) -> Option<SocketAddr> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// attitude under test (`attitude serve`), on ports it chose itself.
pub struct Attitude {
    /// The process.
    pub peer: Peer,
    /// SMTP address.
    pub smtp: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// The configuration file used.
    pub config_path: PathBuf,
    /// Every address it announced (`smtp`, `admin`, and each listener by name).
    pub announced: Vec<(String, String)>,
}

impl std::fmt::Debug for Attitude {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attitude").finish_non_exhaustive()
    }
}

impl Attitude {
    /// Starts `attitude serve` with this TOML configuration (listen and admin are set to
    /// loopback port 0 unless `config` sets them) in front of `backends`.
    pub fn start(config: &str, backends: &[SocketAddr]) -> Attitude {
        Self::start_with_env(config, backends, &[])
    }

    /// [`Attitude::start`] with these environment variables set for the process.
    pub fn start_with_env(
        config: &str,
        backends: &[SocketAddr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Attitude {
        let dir = scratch_dir("attitude");
        let path = dir.join("attitude.toml");
        let mut text = String::new();
        if !config.contains("listen =") {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        if !config.contains("admin =") {
            text.push_str("admin = \"127.0.0.1:0\"\n");
        }
        text.push_str("hostname = \"attitude.test\"\n");
        text.push_str(config);
        if !backends.is_empty() {
            let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            text.push_str(&format!("\n[backend]\nservers = [{}]\n", list.join(", ")));
        }
        std::fs::write(&path, text).expect("write config");
        let mut cmd = Command::new(attitude_bin());
        cmd.arg("serve").arg("--config").arg(&path);
        cmd.env("RUST_LOG", "info");
        cmd.envs(env.iter().copied());
        let (peer, pairs) = Peer::spawn_announced("attitude", cmd);
        Attitude {
            smtp: addr_of(&pairs, "smtp").expect("smtp address"),
            admin: addr_of(&pairs, "admin").expect("admin address"),
            peer,
            config_path: path,
            announced: pairs,
        }
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        addr_of(&self.announced, name).unwrap_or_else(|| panic!("no listener {name} announced"))
    }

    /// GET `path` on the admin server: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// Replaces `from` with `to` in its configuration file (which must hold `from`), sends
    /// SIGHUP, and waits until the reload is applied (`attitude_config_reload_total{result="ok"}`
    /// counts one more); panics if it is not within 10 s.
    pub fn reload(&self, from: &str, to: &str) {
        let ok = || {
            self.metric("attitude_config_reload_total{result=\"ok\"}")
                .unwrap_or(0.0)
        };
        let before = ok();
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        assert!(
            text.contains(from),
            "no {from:?} in the configuration to change"
        );
        std::fs::write(&self.config_path, text.replace(from, to)).expect("write config");
        self.peer.signal("HUP");
        assert!(
            wait_for(Duration::from_secs(10), || ok() > before),
            "the reload ({from:?} -> {to:?}) was not applied"
        );
    }

    /// The value of one sample in `/metrics` (e.g. `attitude_messages_total{outcome="accepted"}`).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// `attitude check-config` on `config` (a backend is added before it): what it printed on
/// stderr when it refused the configuration; panics when it accepted it.
pub fn config_error(config: &str) -> String {
    let file = scratch_dir("check-config").join("attitude.toml");
    std::fs::write(
        &file,
        format!("[backend]\nservers = [\"127.0.0.1:25\"]\n{config}"),
    )
    .expect("write config");
    let out = Command::new(attitude_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run attitude check-config");
    assert!(!out.status.success(), "accepted:\n{config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `/usr/bin/python3 tests/peers/SCRIPT`, to add arguments to and run.
pub fn python_peer(script: &str) -> Command {
    let mut cmd = Command::new(require_tool("/usr/bin/python3"));
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/peers")
            .join(script),
    );
    cmd
}

/// Runs `cmd` to its end: whether it succeeded, and what it printed (stdout, then stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `tests/peers/client.py MODE` (Python's smtplib) to send `file` from `from` to `to`
/// (comma-separated); returns whether the message was accepted, and what the client printed.
pub fn smtplib(
    mode: &str,
    addr: SocketAddr,
    from: &str,
    to: &str,
    file: &std::path::Path,
) -> (bool, String) {
    run(python_peer("client.py")
        .args([
            mode,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            from,
            to,
        ])
        .arg(file))
}

/// Runs `tests/peers/tls_client.py MODE` (Python's smtplib and ssl, trusting `ca_file`):
/// `starttls` or `ssl` (implicit TLS) sends `file`; `cert` only prints the certificate's
/// common name. Returns whether it succeeded, and what it printed.
pub fn tls_client(
    mode: &str,
    addr: SocketAddr,
    ca_file: &Path,
    from: &str,
    to: &str,
    file: &Path,
) -> (bool, String) {
    run(&mut tls_client_command(mode, addr, ca_file, from, to, file))
}

/// The `tls_client.py` command line of [`tls_client`], to run with other settings (environment,
/// pipes).
pub fn tls_client_command(
    mode: &str,
    addr: SocketAddr,
    ca_file: &Path,
    from: &str,
    to: &str,
    file: &Path,
) -> Command {
    let mut cmd = python_peer("tls_client.py");
    cmd.args([mode, &addr.ip().to_string(), &addr.port().to_string()])
        .arg(ca_file)
        .args([from, to])
        .arg(file);
    cmd
}

/// Postfix's `smtp-sink`, dumping every transaction to a file.
pub struct SmtpSink {
    /// The process.
    pub peer: Peer,
    /// Its address.
    pub addr: SocketAddr,
    dump: PathBuf,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink").finish_non_exhaustive()
    }
}

impl SmtpSink {
    /// Starts `smtp-sink` on a free loopback port. `extra` goes before the address
    /// (e.g. `["-R", "..."]`).
    pub fn start(extra: &[&str]) -> SmtpSink {
        let bin = require_tool("/usr/sbin/smtp-sink");
        let dump = scratch_dir("smtp-sink");
        // smtp-sink drops to `nobody`, which must be able to write the dumps.
        let _ = Command::new("chmod").arg("0777").arg(&dump).status();
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let mut cmd = Command::new(&bin);
            cmd.args(["-u", "nobody", "-m", "1000"])
                .arg("-d")
                .arg(format!("{}/%Y%m%d%H%M%S.", dump.display()))
                .args(extra)
                .arg(addr.to_string())
                .arg("256");
            let peer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Peer::spawn_listening("smtp-sink", cmd, addr)
            }));
            if let Ok(peer) = peer {
                return SmtpSink { peer, addr, dump };
            }
        }
        panic!("smtp-sink would not start");
    }

    /// Every dumped transaction, oldest first.
    pub fn dumps(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dump)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }

    /// How many transactions were dumped.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dump)
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}
