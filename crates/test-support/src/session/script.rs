//! Scripted backends: what each in-process backend connection says and expects, step by
//! step, reached through the pool's [`Dial`] seam; what they read is logged for assertions.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attitude_balance::{Dial, Transport};
use futures::future::BoxFuture;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream,
};

use super::PIPE;

/// One step of a scripted backend connection.
#[derive(Debug, Clone)]
enum Step {
    /// Write this reply (CRLF added per line).
    Send(String),
    /// Read a line that starts with this (case-insensitive); anything else is unexpected.
    Expect(String),
    /// Read message content up to the final dot.
    Data,
    /// Read BDAT chunks (each `250`) up to `BDAT n LAST`, then answer with this.
    Chunks(String),
    /// Close the connection.
    Close,
    /// Read and never answer (a backend that hangs).
    Hold,
    /// Wait this long (on tokio's clock) before the next step.
    Pause(Duration),
}

/// What one backend connection does, step by step. After the last step the backend answers
/// `QUIT` with 221 and `RSET`/`NOOP` with 250; anything else is recorded as unexpected and
/// answered `500`.
#[derive(Debug, Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
}

impl Script {
    /// A connection that greets (`220`) and answers EHLO with `capabilities`.
    pub fn smtp(capabilities: &[&str]) -> Self {
        let mut ehlo = vec!["250-backend.test".to_string()];
        ehlo.extend(capabilities.iter().map(|c| format!("250-{c}")));
        let last = ehlo.pop().expect("at least the name");
        ehlo.push(last.replacen("250-", "250 ", 1));
        Self::default()
            .send("220 backend.test ESMTP")
            .expect("EHLO", &ehlo.join("\r\n"))
    }

    /// A connection that takes alice's transaction for bob, up to its 354 (what
    /// [`Client::start_alice_to_bob`](super::Client::start_alice_to_bob) sends).
    pub fn alice_to_bob_up_to_data() -> Self {
        Self::smtp(&["PIPELINING", "8BITMIME"])
            .read("MAIL FROM:<alice@example.org>")
            .expect("RCPT TO:<bob@example.com>", "250 2.1.0 ok\r\n250 2.1.5 ok")
            .expect("DATA", "354 go ahead")
    }

    /// Writes `reply` (lines joined with CRLF).
    pub fn send(mut self, reply: &str) -> Self {
        self.steps.push(Step::Send(reply.to_string()));
        self
    }

    /// Reads a line starting with `prefix`, then answers `reply`.
    pub fn expect(mut self, prefix: &str, reply: &str) -> Self {
        self.steps.push(Step::Expect(prefix.to_string()));
        self.steps.push(Step::Send(reply.to_string()));
        self
    }

    /// Reads a line starting with `prefix` and answers nothing (pipelined commands whose
    /// replies come later).
    pub fn read(mut self, prefix: &str) -> Self {
        self.steps.push(Step::Expect(prefix.to_string()));
        self
    }

    /// A whole message: `DATA` answered `354`, the content read up to the final dot (and
    /// recorded), then `reply`.
    pub fn message(self, reply: &str) -> Self {
        let mut s = self.expect("DATA", "354 go ahead");
        s.steps.push(Step::Data);
        s.send(reply)
    }

    /// Reads the content up to the final dot (after a `354` sent earlier), then `reply`.
    pub fn content(mut self, reply: &str) -> Self {
        self.steps.push(Step::Data);
        self.send(reply)
    }

    /// Reads a message in BDAT chunks (each answered `250`, recorded as one message) up to the
    /// `LAST` one, which gets `reply`.
    pub fn chunks(mut self, reply: &str) -> Self {
        self.steps.push(Step::Chunks(reply.to_string()));
        self
    }

    /// Closes the connection.
    pub fn close(mut self) -> Self {
        self.steps.push(Step::Close);
        self
    }

    /// Waits `wait` (tokio's clock: paused in tests) before the next step: a reply split
    /// across writes, a slow backend.
    pub fn pause(mut self, wait: Duration) -> Self {
        self.steps.push(Step::Pause(wait));
        self
    }

    /// Reads on and never answers.
    pub fn hold(mut self) -> Self {
        self.steps.push(Step::Hold);
        self
    }
}

#[derive(Debug, Default)]
struct Net {
    scripts: HashMap<SocketAddr, VecDeque<Script>>,
    /// Every line each backend read, in order, as `addr> line`.
    log: Vec<String>,
    unexpected: Vec<String>,
    messages: Vec<(SocketAddr, Vec<u8>)>,
    dials: HashMap<SocketAddr, usize>,
}

/// Scripted backends: each connection to an address runs the next script queued for it; an
/// address with none left refuses the connection.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    net: Arc<Mutex<Net>>,
}

impl Backends {
    /// No backends yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `script` for the next connection to `addr`.
    pub fn script(&self, addr: SocketAddr, script: Script) {
        let mut net = self.net.lock().expect("net lock");
        net.scripts.entry(addr).or_default().push_back(script);
    }

    /// Every line the backends read, in order, as `addr> line`.
    pub fn log(&self) -> Vec<String> {
        self.net.lock().expect("net lock").log.clone()
    }

    /// The lines `addr` read.
    pub fn lines(&self, addr: SocketAddr) -> Vec<String> {
        let prefix = format!("{addr}> ");
        self.log()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Lines that did not match the script.
    pub fn unexpected(&self) -> Vec<String> {
        self.net.lock().expect("net lock").unexpected.clone()
    }

    /// Panics, naming them, when a backend read lines its script did not expect.
    pub fn assert_scripted(&self) {
        let unexpected = self.unexpected();
        assert!(unexpected.is_empty(), "off the script: {unexpected:?}");
    }

    /// The messages `addr` received (content as read, dot-stuffed, without the final dot).
    pub fn messages(&self, addr: SocketAddr) -> Vec<Vec<u8>> {
        let net = self.net.lock().expect("net lock");
        net.messages
            .iter()
            .filter(|(a, _)| *a == addr)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// How many connections were made to `addr`.
    pub fn dials(&self, addr: SocketAddr) -> usize {
        *self
            .net
            .lock()
            .expect("net lock")
            .dials
            .get(&addr)
            .unwrap_or(&0)
    }
}

impl Dial for Backends {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Transport>>> {
        let script = {
            let mut net = self.net.lock().expect("net lock");
            *net.dials.entry(addr).or_default() += 1;
            net.scripts.get_mut(&addr).and_then(VecDeque::pop_front)
        };
        let net = self.net.clone();
        Box::pin(async move {
            let Some(script) = script else {
                return Err(io::ErrorKind::ConnectionRefused.into());
            };
            let (ours, theirs) = tokio::io::duplex(PIPE);
            tokio::spawn(run(script, addr, theirs, net));
            Ok(Box::new(Peekable::new(ours)) as Box<dyn Transport>)
        })
    }
}

/// The pool's end of an in-process connection. Unlike a bare duplex it can tell whether
/// something arrived unasked (what a TCP peek tells the pool): bytes read to find out are kept
/// and handed to the next read.
#[derive(Debug)]
struct Peekable {
    io: std::sync::Mutex<DuplexStream>,
    early: std::sync::Mutex<Vec<u8>>,
}

impl Peekable {
    fn new(io: DuplexStream) -> Self {
        Self {
            io: std::sync::Mutex::new(io),
            early: std::sync::Mutex::default(),
        }
    }
}

impl Transport for Peekable {
    fn quiet(&self) -> bool {
        let mut early = self.early.lock().expect("early lock");
        if early.is_empty() {
            let mut byte = [0u8; 64];
            let mut buf = tokio::io::ReadBuf::new(&mut byte);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut io = self.io.lock().expect("io lock");
            match std::pin::Pin::new(&mut *io).poll_read(&mut cx, &mut buf) {
                // Closed (a read of nothing) is not quiet either.
                std::task::Poll::Ready(Ok(())) if buf.filled().is_empty() => return false,
                std::task::Poll::Ready(Ok(())) => early.extend_from_slice(buf.filled()),
                std::task::Poll::Ready(Err(_)) => return false,
                std::task::Poll::Pending => {}
            }
        }
        early.is_empty()
    }
}

impl AsyncRead for Peekable {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let early = this.early.get_mut().expect("early lock");
        if !early.is_empty() {
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early[..n]);
            early.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(this.io.get_mut().expect("io lock")).poll_read(cx, buf)
    }
}

impl AsyncWrite for Peekable {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(self.get_mut().io.get_mut().expect("io lock")).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(self.get_mut().io.get_mut().expect("io lock")).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(self.get_mut().io.get_mut().expect("io lock")).poll_shutdown(cx)
    }
}

/// Plays `script` on one connection.
async fn run(script: Script, addr: SocketAddr, io: DuplexStream, net: Arc<Mutex<Net>>) {
    let (read, mut write) = tokio::io::split(io);
    let mut read = BufReader::new(read);
    let record = |line: &str| {
        net.lock()
            .expect("net lock")
            .log
            .push(format!("{addr}> {line}"))
    };
    let unexpected = |what: String| net.lock().expect("net lock").unexpected.push(what);
    let mut line = String::new();
    for step in script.steps {
        match step {
            Step::Send(reply) => {
                let wire = format!("{}\r\n", reply.replace("\r\n", "\n").replace('\n', "\r\n"));
                if write.write_all(wire.as_bytes()).await.is_err() {
                    return;
                }
            }
            Step::Expect(prefix) => {
                line.clear();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    unexpected(format!("{addr}: closed while expecting {prefix}"));
                    return;
                }
                let got = line.trim_end_matches(['\r', '\n']).to_string();
                record(&got);
                if !got
                    .to_ascii_uppercase()
                    .starts_with(&prefix.to_ascii_uppercase())
                {
                    unexpected(format!("{addr}: expected {prefix}, got {got}"));
                    return;
                }
            }
            Step::Data => {
                let mut content = Vec::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        unexpected(format!("{addr}: closed inside DATA"));
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    content.extend_from_slice(line.as_bytes());
                }
                record(".");
                net.lock().expect("net lock").messages.push((addr, content));
            }
            Step::Chunks(reply) => {
                let mut content = Vec::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        unexpected(format!("{addr}: closed inside BDAT"));
                        return;
                    }
                    let got = line.trim_end_matches(['\r', '\n']).to_string();
                    record(&got);
                    let mut words = got.split(' ');
                    let size = match (words.next(), words.next().map(str::parse::<usize>)) {
                        (Some(verb), Some(Ok(size))) if verb.eq_ignore_ascii_case("BDAT") => size,
                        _ => {
                            unexpected(format!("{addr}: expected BDAT, got {got}"));
                            return;
                        }
                    };
                    let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                    let mut chunk = vec![0; size];
                    if read.read_exact(&mut chunk).await.is_err() {
                        unexpected(format!("{addr}: closed inside a BDAT chunk"));
                        return;
                    }
                    content.extend_from_slice(&chunk);
                    let answer = if last {
                        format!("{reply}\r\n")
                    } else {
                        format!("250 2.0.0 {size} octets\r\n")
                    };
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if last {
                        break;
                    }
                }
                net.lock().expect("net lock").messages.push((addr, content));
            }
            Step::Close => return,
            Step::Pause(wait) => tokio::time::sleep(wait).await,
            Step::Hold => {
                let mut sink = Vec::new();
                let _ = read.read_to_end(&mut sink).await;
                return;
            }
        }
    }
    // The script is done: a polite tail.
    loop {
        line.clear();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let got = line.trim_end_matches(['\r', '\n']).to_string();
        record(&got);
        let verb = got.to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("QUIT") {
            b"221 2.0.0 bye\r\n"
        } else if verb.starts_with("RSET") || verb.starts_with("NOOP") {
            b"250 2.0.0 ok\r\n"
        } else {
            unexpected(format!("{addr}: unscripted {got}"));
            b"500 5.5.1 not in the script\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
        if verb.starts_with("QUIT") {
            return;
        }
    }
}
