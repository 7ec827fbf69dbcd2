//! Backends for the pool tests: the project's own sink (restartable on a fixed port, messages in
//! a Maildir) and a real Postfix instance with its own configuration directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::peer::{Peer, attitude_bin, free_port, require_tool, scratch_dir, wait_for};

/// `attitude sink --maildir DIR` on a fixed address: every message it answered 250 to is a file
/// in `DIR/new` (written before the 250), so a `kill -9` loses nothing it acknowledged.
pub struct Sink {
    /// The process (None while stopped).
    pub peer: Option<Peer>,
    /// Its address (kept across restarts).
    pub addr: SocketAddr,
    /// Its Maildir.
    pub maildir: PathBuf,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// Starts a sink on a free loopback port (another, if a test running beside took it first).
    pub fn start() -> Sink {
        let maildir = scratch_dir("sink");
        for _ in 0..5 {
            let mut sink = Sink {
                peer: None,
                addr: format!("127.0.0.1:{}", free_port())
                    .parse()
                    .expect("address"),
                maildir: maildir.clone(),
            };
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.restart()));
            if started.is_ok() {
                return sink;
            }
        }
        panic!("attitude sink would not start");
    }

    /// Starts it again on the same address and Maildir.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(attitude_bin());
        cmd.arg("sink")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--maildir")
            .arg(&self.maildir);
        self.peer = Some(Peer::spawn_listening("attitude-sink", cmd, self.addr));
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut peer) = self.peer.take() {
            peer.signal("KILL");
            peer.wait_exit(Duration::from_secs(5));
        }
    }

    /// The messages it stored.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let new = self.maildir.join("new");
        std::fs::read_dir(new)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many messages it stored.
    pub fn count(&self) -> usize {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

/// A real Postfix (Debian's `postfix`) with its own configuration and queue directories, on four
/// loopback ports: `plain` (XCLIENT allowed from 127.0.0.1 only, so once per connection: Postfix
/// checks a second XCLIENT against the address the first one set), `reidentify` (XCLIENT allowed
/// from 127.0.0.0/8, so a connection can be given to another 127.x client), `proxied`
/// (`smtpd_upstream_proxy_protocol = haproxy`) and `held` (every message it accepts stays in
/// the hold queue, for `postcat`). It relays mail for `example.com` to the `discard` transport
/// and logs to a file of its own. Stopped (by its master's PID) on drop.
pub struct Postfix {
    /// The port where XCLIENT is authorised.
    pub plain: SocketAddr,
    /// The port whose messages stay in the hold queue ([`Postfix::held`]).
    pub held: SocketAddr,
    /// The port where XCLIENT may be sent again for another 127.x client.
    pub reidentify: SocketAddr,
    /// The port that expects a PROXY header.
    pub proxied: SocketAddr,
    dir: PathBuf,
    master: u32,
}

impl std::fmt::Debug for Postfix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postfix").finish_non_exhaustive()
    }
}

impl Postfix {
    /// Writes the configuration, starts `postfix -c DIR start` and waits for its ports (new
    /// ports and a new directory when another test took a port first).
    pub fn start() -> Postfix {
        Self::start_with("")
    }

    /// As [`Postfix::start`], with `main_cf` appended to its main.cf (a later setting wins).
    pub fn start_with(main_cf: &str) -> Postfix {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(main_cf) {
                Ok(postfix) => return postfix,
                Err(why) => failures.push(why),
            }
        }
        panic!("postfix did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(main_cf: &str) -> Result<Postfix, String> {
        let postfix = require_tool("/usr/sbin/postfix");
        let dir = scratch_dir("postfix");
        let (etc, queue, data) = (dir.join("etc"), dir.join("queue"), dir.join("data"));
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).expect("postfix dirs");
        }
        // The master's lock file lives in data_directory, owned by the mail owner.
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown postfix {}", data.display());
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let proxied: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let reidentify: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let held: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.join("maillog");
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
default_transport = discard
relay_transport = discard
local_transport = discard
alias_maps =
alias_database =
maillog_file_prefixes = {dir}
maillog_file = {log}
smtpd_authorized_xclient_hosts = 127.0.0.1/32
{main_cf}
",
                queue = queue.display(),
                data = data.display(),
                dir = dir.display(),
                log = log.display(),
            ),
        )
        .expect("main.cf");
        std::fs::write(
            etc.join("master.cf"),
            format!(
                "{plain} inet n - n - - smtpd
{proxied} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy
{reidentify} inet n - n - - smtpd -o smtpd_authorized_xclient_hosts=127.0.0.0/8
{held} inet n - n - - smtpd -o {{smtpd_recipient_restrictions = check_recipient_access static:HOLD}}
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000 0 flush
proxymap unix - - n - - proxymap
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
discard unix - - n - - discard
error unix - - n - - error
retry unix - - n - - error
smtp unix - - n - - smtp
postlog unix-dgram n - n - 1 postlogd
"
            ),
        )
        .expect("master.cf");
        let out = Command::new(postfix)
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .expect("run postfix");
        let pid_file = queue.join("pid/master.pid");
        // Listening is not serving (a master that bound its sockets can still be stuck on a busy
        // machine): the plain port must greet.
        let up = out.status.success()
            && wait_for(Duration::from_secs(20), || {
                [proxied, reidentify, held]
                    .iter()
                    .all(|a| std::net::TcpStream::connect(a).is_ok())
                    && greets(plain)
            });
        let master = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        match (up, master) {
            (true, Some(master)) => Ok(Postfix {
                plain,
                held,
                reidentify,
                proxied,
                dir,
                master,
            }),
            (_, master) => {
                if let Some(master) = master {
                    drop(Postfix {
                        plain,
                        held,
                        reidentify,
                        proxied,
                        dir: dir.clone(),
                        master,
                    });
                }
                Err(format!(
                    "({}): {}{}\nlog:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
            }
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits until its log has a line containing every one of `parts`; returns that line.
    pub fn wait_log(&self, parts: &[&str]) -> Option<String> {
        let mut found = None;
        wait_for(Duration::from_secs(15), || {
            found = self
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned);
            found.is_some()
        });
        found
    }

    /// The messages in the hold queue (from the `held` port), oldest first, as `postcat`
    /// prints them: envelope records, then the content.
    pub fn held_messages(&self) -> Vec<String> {
        let hold = self.dir.join("queue/hold");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&hold)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|(_, file)| {
                let out = Command::new("/usr/sbin/postcat")
                    .arg("-c")
                    .arg(self.dir.join("etc"))
                    .args(["-e", "-h", "-b"])
                    .arg(file)
                    .output()
                    .expect("run postcat");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect()
    }

    /// `postqueue -f`: every deferred message is tried again now (what an operator does; a
    /// test that waits for a retry does not depend on the queue manager's timers on a busy
    /// machine).
    pub fn flush(&self) {
        let _ = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg("-f")
            .output();
    }

    /// Waits until the hold queue has `n` messages; returns them ([`Postfix::held_messages`]).
    pub fn wait_held(&self, n: usize) -> Vec<String> {
        wait_for(Duration::from_secs(15), || self.held_messages().len() >= n);
        self.held_messages()
    }

    /// Where it keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // SIGTERM to this instance's master only; it stops its own children.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.master.to_string())
            .status();
        let proc = PathBuf::from(format!("/proc/{}", self.master));
        wait_for(Duration::from_secs(10), || !proc.exists());
    }
}

/// Whether the SMTP server at `addr` sends its 220 greeting within two seconds.
fn greets(addr: SocketAddr) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let greeted = BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220");
    let _ = (&stream).write_all(b"QUIT\r\n");
    greeted
}
