//! The real content scanners, from Debian, run offline on loopback ports of the test's:
//!
//! - [`Clamd`]: `clamd -c <config>` in the foreground, with a signature database the test
//!   writes itself (the EICAR test file's MD5, made with `sigtool --md5`: no freshclam, no
//!   network); it starts in about a second.
//! - [`Rspamd`]: `rspamd -f` over Debian's configuration with a `local.d` of the test's: its
//!   workers on the test's ports (the proxy in milter mode, scanning itself), network checks (RBLs, SURBL, DNS-based modules) off, the
//!   `milter_headers` module on for local clients, and a multimap that soft-rejects one test
//!   sender. It takes about 20 s to start, so a test starts it once and runs its cases on it.
//!   As root its workers run as `_rspamd` (never `--insecure`).
//!
//! Both are killed by their PID when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peer::{Peer, free_port, require_tool, scratch_dir, wait_for};

/// The EICAR anti-virus test file (68 octets): every scanner reports it, it harms nothing.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The GTUBE string: rspamd rejects a message that has it.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The sender the test rspamd soft-rejects.
pub const SOFT_SENDER: &str = "soft@example.org";

/// A clamd of the test's own.
pub struct Clamd {
    peer: Option<Peer>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its unix socket (it listens on both).
    pub socket: PathBuf,
    dir: PathBuf,
}

impl std::fmt::Debug for Clamd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clamd")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Clamd {
    /// A clamd that knows EICAR, refusing streams over `stream_max` octets.
    pub fn start(stream_max: u64) -> Clamd {
        let dir = scratch_dir("clamd");
        let db = dir.join("db");
        std::fs::create_dir_all(&db).expect("create the database directory");
        let sample = dir.join("eicar.com");
        std::fs::write(&sample, EICAR).expect("write the EICAR sample");
        let out = Command::new(require_tool("sigtool"))
            .arg("--md5")
            .arg(&sample)
            .output()
            .expect("run sigtool");
        assert!(out.status.success(), "sigtool --md5 failed");
        // `MD5:size:name`: the signature is named after the sample, clamd reports
        // `eicar.com.UNOFFICIAL`.
        std::fs::write(db.join("test.hdb"), &out.stdout).expect("write test.hdb");
        let port = free_port();
        let root = running_as_root();
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nDatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n\
                 LocalSocket {}\nStreamMaxLength {stream_max}\nLogFile {}\nPidFile {}\n{}",
                db.display(),
                dir.join("clamd.sock").display(),
                dir.join("clamd.log").display(),
                dir.join("clamd.pid").display(),
                if root { "User root\n" } else { "" }
            ),
        )
        .expect("write clamd.conf");
        let mut clamd = Clamd {
            peer: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            socket: dir.join("clamd.sock"),
            dir,
        };
        clamd.spawn();
        clamd
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(require_tool("/usr/sbin/clamd"));
        cmd.arg("-c").arg(self.dir.join("clamd.conf"));
        self.peer = Some(Peer::spawn_listening("clamd", cmd, self.addr));
    }

    /// Stops it (by its PID) and waits until the port is closed.
    pub fn stop(&mut self) {
        self.peer = None;
        let addr = self.addr;
        assert!(wait_for(Duration::from_secs(10), || port_closed(addr)));
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.spawn();
    }
}

/// True when rspamd's worker at `addr` answers `/ping` (any failure is "not yet").
fn pong(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = String::new();
    stream
        .write_all(b"GET /ping HTTP/1.0\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut reply))
        .is_ok()
        && reply.contains("pong")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// An rspamd of the test's own; see the module docs.
pub struct Rspamd {
    peer: Option<Peer>,
    /// The normal worker (`POST /checkv2`).
    pub addr: SocketAddr,
    /// The proxy worker in milter mode, scanning itself.
    pub milter: SocketAddr,
    dir: PathBuf,
}

impl std::fmt::Debug for Rspamd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rspamd")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Modules that look things up on the network (or need a Redis): off, so rspamd answers
/// offline and at once.
const NETWORK_MODULES: &[&str] = &[
    "rbl",
    "surbl",
    "emails",
    "dkim",
    "spf",
    "dmarc",
    "arc",
    "asn",
    "fuzzy_check",
    "phishing",
    "dcc",
    "replies",
    "neural",
    "ratelimit",
    "greylist",
    "history_redis",
    "url_reputation",
    "mx_check",
    "hfilter",
    "dkim_signing",
    "metadata_exporter",
    "clickhouse",
    "elastic",
    "reputation",
];

impl Rspamd {
    /// Starts it and waits until its normal worker answers (about 20 s).
    pub fn start() -> Rspamd {
        let dir = scratch_dir("rspamd");
        let local = dir.join("local.d");
        for d in [&local, &dir.join("db"), &dir.join("run"), &dir.join("log")] {
            std::fs::create_dir_all(d).expect("create rspamd's directories");
        }
        let port = free_port();
        let write = |name: &str, text: String| {
            std::fs::write(local.join(name), text).expect("write rspamd's local.d");
        };
        write(
            "worker-normal.inc",
            format!("bind_socket = \"127.0.0.1:{port}\";\ncount = 1;\n"),
        );
        write(
            "worker-controller.inc",
            format!("bind_socket = \"127.0.0.1:{}\";\ncount = 1;\n", free_port()),
        );
        let milter = SocketAddr::from(([127, 0, 0, 1], free_port()));
        write(
            "worker-proxy.inc",
            format!(
                "bind_socket = \"{milter}\";\ncount = 1;\nmilter = yes;\n\
                 upstream \"local\" {{\n  default = yes;\n  self_scan = yes;\n}}\n"
            ),
        );
        write(
            "logging.inc",
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                dir.join("log/rspamd.log").display()
            ),
        );
        // No resolver: every lookup fails at once instead of waiting for the network.
        write(
            "options.inc",
            "disable_hyperscan = true;\n\
             dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s; retransmits = 0; }\n"
                .into(),
        );
        for module in NETWORK_MODULES {
            write(&format!("{module}.conf"), "enabled = false;\n".into());
        }
        write(
            "milter_headers.conf",
            "use = [\"x-spamd-result\", \"x-spam-status\"];\nskip_local = false;\n\
             skip_authenticated = false;\n"
                .into(),
        );
        let soft = dir.join("soft-senders.map");
        std::fs::write(&soft, format!("{SOFT_SENDER}\n")).expect("write the map");
        write(
            "multimap.conf",
            format!(
                "TEST_SOFT_SENDER {{\n  type = \"from\";\n  map = \"{}\";\n  \
                 action = \"soft reject\";\n  message = \"Try again later, test sender\";\n}}\n",
                soft.display()
            ),
        );
        let root = running_as_root();
        if root {
            let status = Command::new("chown")
                .arg("-R")
                .arg("_rspamd:_rspamd")
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown of rspamd's directory failed");
        }
        let var = |k: &str, v: &Path| format!("--var={k}={}", v.display());
        let mut cmd = Command::new(require_tool("/usr/bin/rspamd"));
        cmd.arg("-f")
            .arg("-c")
            .arg("/etc/rspamd/rspamd.conf")
            .arg(var("LOCAL_CONFDIR", &dir))
            .arg(var("DBDIR", &dir.join("db")))
            .arg(var("RUNDIR", &dir.join("run")))
            .arg(var("LOGDIR", &dir.join("log")));
        if root {
            cmd.args(["-u", "_rspamd", "-g", "_rspamd"]);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // It binds its workers' sockets once its configuration is loaded (about 20 s).
        let peer = Peer::spawn_listening_within("rspamd", cmd, addr, Duration::from_secs(120));
        let rspamd = Rspamd {
            peer: Some(peer),
            addr,
            milter,
            dir,
        };
        assert!(
            wait_for(Duration::from_secs(90), || pong(addr)),
            "rspamd did not answer /ping; its log: {}",
            rspamd.log()
        );
        rspamd
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/rspamd.log")).unwrap_or_default()
    }

    /// Stops it (by its PID) and waits until the port is closed.
    pub fn stop(&mut self) {
        assert!(
            self.terminate(Duration::from_secs(15)),
            "rspamd did not stop"
        );
    }

    /// TERM to the main process (its workers are its children: it stops them), then up to
    /// `limit` for the port to close; true when it did (or nothing ran).
    fn terminate(&mut self, limit: Duration) -> bool {
        let Some(peer) = self.peer.take() else {
            return true;
        };
        peer.signal("TERM");
        let addr = self.addr;
        wait_for(limit, || port_closed(addr))
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// True when nothing listens on `addr` any more.
fn port_closed(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_err()
}
