//! The aiosmtpd recording backend (`tests/peers/recorder.py`) and what it stored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::peer::{Peer, addr_of, require_tool, scratch_dir};

/// One message as the aiosmtpd recorder stored it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// MAIL FROM address.
    pub mail_from: String,
    /// RCPT TO addresses.
    pub rcpt_tos: Vec<String>,
    /// The message as received (after dot-unstuffing), byte for byte, without attitude's own
    /// trace header (see `trace`).
    pub content: Vec<u8>,
    /// attitude's `Received:` header at the top of the message, if it added one (CRLF and
    /// folding kept).
    pub trace: Option<String>,
    /// The login the session authenticated as, if it did.
    pub login: Option<String>,
    /// MAIL's AUTH= parameter as the recorder received it (with `--auth`), if there was one.
    pub mail_auth: Option<String>,
    /// With `--proxy`: the source the PROXY header gave (`ADDR PORT`, or `LOCAL`).
    pub proxy: Option<String>,
    /// With `--tls-cert`: the TLS version and cipher of the session, if it used STARTTLS.
    pub tls: Option<String>,
}

/// The aiosmtpd recording backend (`tests/peers/recorder.py`, run with `/usr/bin/python3`).
pub struct Recorder {
    /// The process.
    pub peer: Peer,
    /// Its address.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the recorder on a loopback port it picks itself.
    pub fn start() -> Recorder {
        Self::start_with_accounts(&[])
    }

    /// Starts the recorder offering AUTH PLAIN and LOGIN for these `(login, password)` pairs.
    pub fn start_with_accounts(accounts: &[(&str, &str)]) -> Recorder {
        let args: Vec<String> = accounts
            .iter()
            .flat_map(|(login, password)| ["--auth".to_owned(), format!("{login}:{password}")])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_args(&args)
    }

    /// Starts the recorder with these extra arguments (`--proxy`, `--listen HOST:PORT`, ...).
    pub fn start_args(args: &[&str]) -> Recorder {
        let python = require_tool("/usr/bin/python3");
        let ok = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "python3-aiosmtpd is not installed: run `make deps`");
        let dir = scratch_dir("recorder");
        Self::start_in(dir, args)
    }

    /// Starts the recorder storing into `dir` (a restart keeps what an earlier run stored).
    pub fn start_in(dir: PathBuf, args: &[&str]) -> Recorder {
        let python = require_tool("/usr/bin/python3");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/recorder.py");
        let mut cmd = Command::new(python);
        cmd.arg(script).arg("--dir").arg(&dir).args(args);
        let (peer, pairs) = Peer::spawn_announced("recorder", cmd);
        Recorder {
            addr: addr_of(&pairs, "smtp").expect("recorder address"),
            peer,
            dir,
        }
    }

    /// The messages recorded so far, in order.
    pub fn messages(&self) -> Vec<Recorded> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "env"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|env| {
                let meta = std::fs::read_to_string(env).expect("read envelope");
                let content = std::fs::read(env.with_extension("eml")).expect("read eml");
                let (trace, content) = split_trace(content);
                let mut lines = meta.lines();
                let mail_from = lines.next().unwrap_or_default().to_owned();
                Recorded {
                    mail_from,
                    rcpt_tos: lines.map(str::to_owned).collect(),
                    content,
                    trace,
                    login: std::fs::read_to_string(env.with_extension("auth")).ok(),
                    mail_auth: std::fs::read_to_string(env.with_extension("mailauth")).ok(),
                    proxy: std::fs::read_to_string(env.with_extension("proxy"))
                        .ok()
                        .map(|p| p.trim().to_owned()),
                    tls: std::fs::read_to_string(env.with_extension("tls"))
                        .ok()
                        .map(|p| p.trim().to_owned()),
                }
            })
            .collect()
    }
}

/// attitude's own `Received:` header (the first header, with its folded lines, naming
/// `(attitude)`) and the message without it.
pub fn split_trace(content: Vec<u8>) -> (Option<String>, Vec<u8>) {
    if !content.starts_with(b"Received: ") {
        return (None, content);
    }
    let mut end = 0;
    while let Some(lf) = content[end..].iter().position(|&b| b == b'\n') {
        end += lf + 1;
        if !matches!(content.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let header = String::from_utf8_lossy(&content[..end]).into_owned();
    if !header.contains("(attitude)") {
        return (None, content);
    }
    (Some(header), content[end..].to_vec())
}
