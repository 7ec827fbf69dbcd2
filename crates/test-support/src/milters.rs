//! Real milters from Debian, run on a loopback port of the test's, and scripted ones that fail:
//!
//! - [`OpenDkim`]: `opendkim -f -x <config>` signing for `example.org` with a key
//!   `opendkim-genkey` makes in the test's directory (relaxed/relaxed, every client internal);
//!   [`OpenDkim::public_key`] is the key's DNS record, for a verifier that asks no DNS.
//! - [`BadMilter`]: a TCP listener that, per connection, never answers, or answers the
//!   negotiation and then garbage (a milter that hangs or is confused).
//!
//! Stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::peer::{Peer, free_port, require_tool, scratch_dir};

/// An opendkim of the test's own, signing for `example.org` (selector `test`).
pub struct OpenDkim {
    _peer: Peer,
    /// Where it listens (`inet:PORT@127.0.0.1`).
    pub addr: SocketAddr,
    dir: PathBuf,
    /// Its selector.
    pub selector: String,
}

impl std::fmt::Debug for OpenDkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDkim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl OpenDkim {
    /// The signing domain.
    pub const DOMAIN: &'static str = "example.org";
    /// The selector.
    pub const SELECTOR: &'static str = "test";

    /// Makes a key and starts opendkim in signing mode.
    pub fn start() -> OpenDkim {
        Self::start_with(Self::SELECTOR, "")
    }

    /// As [`OpenDkim::start`], with this selector and more configuration lines (a second
    /// signer: `SignHeaders` with `DKIM-Signature` signs the first one's signature too).
    pub fn start_with(selector: &str, extra: &str) -> OpenDkim {
        let dir = scratch_dir("opendkim");
        let out = Command::new(require_tool("/usr/sbin/opendkim-genkey"))
            .arg("-D")
            .arg(&dir)
            .args(["-d", Self::DOMAIN, "-s", selector])
            .output()
            .expect("run opendkim-genkey");
        assert!(
            out.status.success(),
            "opendkim-genkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("address");
            let config = dir.join("opendkim.conf");
            std::fs::write(
                &config,
                format!(
                    "Mode s\nDomain {domain}\nSelector {selector}\nKeyFile {key}\n\
                     Socket inet:{port}@127.0.0.1\nBackground no\nUserID root\n\
                     RequireSafeKeys no\nInternalHosts 0.0.0.0/0\n\
                     Canonicalization relaxed/relaxed\nSyslog no\nPidFile {pid}\n{extra}",
                    domain = Self::DOMAIN,
                    key = dir.join(format!("{selector}.private")).display(),
                    port = addr.port(),
                    pid = dir.join("opendkim.pid").display(),
                ),
            )
            .expect("write opendkim.conf");
            let mut cmd = Command::new(require_tool("/usr/sbin/opendkim"));
            cmd.arg("-f").arg("-x").arg(&config);
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Peer::spawn_listening_within("opendkim", cmd, addr, Duration::from_secs(10))
            }));
            if let Ok(peer) = started {
                return OpenDkim {
                    _peer: peer,
                    addr,
                    dir,
                    selector: selector.to_owned(),
                };
            }
        }
        panic!("opendkim would not start");
    }

    /// The key's DNS record (`v=DKIM1; k=rsa; p=...`), from the `.txt` opendkim-genkey wrote.
    pub fn public_key(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.txt", self.selector)))
            .expect("read the key's DNS record");
        // `test._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=..." ) ; comment`
        text.split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, part)| part)
            .collect()
    }
}

/// How a [`BadMilter`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Reads and never answers.
    Silent,
    /// Answers the negotiation, then garbage to the next command.
    Garbage,
    /// Answers the negotiation and every stage with CONTINUE, then at end of message sends a
    /// header change and closes before its verdict.
    DiesAtEnd,
    /// Answers every stage with CONTINUE; at end of message adds `carol@example.com` and
    /// `x@elsewhere.example` when told so (`true`), else only carol, deletes
    /// `bob@example.com`, then CONTINUE.
    Readdresses(bool),
    /// Answers the negotiation and the connection, then REJECT to MAIL.
    RejectsMail,
}

/// A milter that misbehaves ([`Misbehaviour`]), on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct BadMilter {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl BadMilter {
    /// Starts it.
    pub fn start(how: Misbehaviour) -> BadMilter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let stopped = stopped.clone();
                        std::thread::spawn(move || serve(conn, how, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        BadMilter { addr, stop }
    }
}

impl Drop for BadMilter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one packet: its command octet and data (`None` at the end).
fn packet(conn: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).ok()?;
    let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut data).ok()?;
    let (code, rest) = data.split_first()?;
    Some((*code, rest.to_vec()))
}

fn reply(conn: &mut std::net::TcpStream, data: &[u8]) {
    let _ = conn.write_all(&(data.len() as u32).to_be_bytes());
    let _ = conn.write_all(data);
}

fn serve(mut conn: std::net::TcpStream, how: Misbehaviour, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut negotiated = false;
    while !stop.load(Ordering::Relaxed) {
        let Some((code, _)) = packet(&mut conn) else {
            if conn.peek(&mut [0u8; 1]).is_ok_and(|n| n == 0) {
                return;
            }
            continue;
        };
        match (how, code, negotiated) {
            (Misbehaviour::Silent, _, _) => {}
            (_, b'O', false) => {
                negotiated = true;
                // Version 6, add headers and recipients, delete recipients; every step wanted
                // and answered.
                let mut optneg = vec![b'O'];
                optneg.extend_from_slice(&6u32.to_be_bytes());
                optneg.extend_from_slice(&0x0du32.to_be_bytes());
                optneg.extend_from_slice(&0u32.to_be_bytes());
                reply(&mut conn, &optneg);
            }
            (_, b'D', _) => {}
            (Misbehaviour::Garbage, _, _) => reply(&mut conn, b"Zgarbage"),
            (Misbehaviour::DiesAtEnd, b'E', _) => {
                reply(&mut conn, b"hX-Half\0done\0");
                return;
            }
            (Misbehaviour::Readdresses(elsewhere), b'E', _) => {
                reply(&mut conn, b"+<carol@example.com>\0");
                if elsewhere {
                    reply(&mut conn, b"+<x@elsewhere.example>\0");
                }
                reply(&mut conn, b"-<bob@example.com>\0");
                reply(&mut conn, b"c");
            }
            (Misbehaviour::RejectsMail, b'M', _) => reply(&mut conn, b"r"),
            (Misbehaviour::RejectsMail, b'A' | b'Q', _) => {}
            (Misbehaviour::RejectsMail, _, _) => reply(&mut conn, b"c"),
            (Misbehaviour::DiesAtEnd | Misbehaviour::Readdresses(_), b'A' | b'Q', _) => {}
            (Misbehaviour::DiesAtEnd | Misbehaviour::Readdresses(_), _, _) => {
                reply(&mut conn, b"c")
            }
        }
    }
}
