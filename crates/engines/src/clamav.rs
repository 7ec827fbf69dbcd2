//! clamd's `zINSTREAM`: `zINSTREAM\0`, then chunks of a 4-byte big-endian length and the data,
//! then a zero length; clamd answers `stream: OK\0`, `stream: NAME FOUND\0`, or
//! `INSTREAM size limit exceeded. ERROR\0` once the stream passed its `StreamMaxLength` (it
//! may close the connection before the rest was written).
//!
//! A [`ClamScan`] is one scan in progress: a task that owns the connection and writes what
//! [`ClamScan::feed`] hands it, so the message reaches clamd while it streams to the backend;
//! [`ClamScan::finish`] ends the stream and reads the verdict. Dropping it aborts the scan.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Largest piece written as one INSTREAM chunk (clamd's own clients use 8 KiB to 64 KiB).
const MAX_PIECE: usize = 64 * 1024;
/// Chunks waiting for the scan task: a slow clamd slows the upload rather than fill memory.
const QUEUE: usize = 8;
/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// Where a clamd listens: `host:port`, or the path of its unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `TCPSocket` (`host:port`).
    Tcp(String),
    /// `LocalSocket` (an absolute path).
    Unix(PathBuf),
}

impl FromStr for ClamdAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is neither host:port (clamd's TCPSocket) nor an absolute socket path \
                 (its LocalSocket)"
            )),
        }
    }
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What clamd said of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamVerdict {
    /// `stream: OK`.
    Clean,
    /// `stream: NAME FOUND`: the signature's name.
    Found(String),
    /// The stream passed clamd's `StreamMaxLength`: not scanned.
    SizeLimit,
}

/// Why a scan gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClamError {
    /// No address took the connection.
    #[error("no clamd reachable: {0}")]
    Connect(String),
    /// clamd took longer than the timeout for one step.
    #[error("clamd did not answer in time")]
    Timeout,
    /// The connection failed after it was made.
    #[error("clamd connection failed: {0}")]
    Io(#[from] io::Error),
    /// clamd answered something other than a verdict (an `ERROR` line, garbage).
    #[error("clamd answered {0:?}")]
    Protocol(String),
}

impl ClamError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
            Self::Protocol(_) => "protocol",
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One or more clamd daemons, tried in turn.
#[derive(Debug, Clone)]
pub struct Clamd {
    addresses: Vec<ClamdAddress>,
    timeout: Duration,
}

impl Clamd {
    /// Daemons at `addresses` (tried in order); `timeout` bounds each step: connecting, writing
    /// a chunk, the verdict after the last one.
    pub fn new(addresses: Vec<ClamdAddress>, timeout: Duration) -> Self {
        Self { addresses, timeout }
    }

    /// Starts a scan: connects (on a task) and takes chunks as they come.
    pub fn start(&self) -> ClamScan {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(self.addresses.clone(), self.timeout, rx));
        ClamScan { tx: Some(tx), task }
    }

    /// `zPING`: true when the first daemon that takes a connection answers `PONG`.
    pub async fn ping(&self) -> Result<(), ClamError> {
        let mut stream = connect(&self.addresses, self.timeout).await?;
        step(self.timeout, stream.write_all(b"zPING\0")).await?;
        let reply = read_reply(&mut stream, self.timeout).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(ClamError::Protocol(reply))
        }
    }
}

/// One scan in progress; see the module docs.
#[derive(Debug)]
pub struct ClamScan {
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<Result<ClamVerdict, ClamError>>,
}

impl ClamScan {
    /// A handle that feeds this scan from elsewhere (a response future).
    pub fn feeder(&self) -> Feeder {
        Feeder(self.tx.clone().expect("a scan not finished"))
    }

    /// Ends the stream and waits for the verdict.
    pub async fn finish(mut self) -> Result<ClamVerdict, ClamError> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(verdict) => verdict,
            Err(e) => Err(ClamError::Io(io::Error::other(e))),
        }
    }
}

impl Drop for ClamScan {
    fn drop(&mut self) {
        // After `finish` the task is done and this does nothing; before it, the scan is
        // abandoned (the transaction ended another way) and its connection closed.
        self.task.abort();
    }
}

/// Feeds chunks to a [`ClamScan`].
#[derive(Debug, Clone)]
pub struct Feeder(mpsc::Sender<Bytes>);

impl Feeder {
    /// Hands `chunk` to the scan; waits while clamd is behind. A scan that already failed takes
    /// nothing (its error is the verdict).
    pub async fn feed(&self, chunk: Bytes) {
        let _ = self.0.send(chunk).await;
    }
}

async fn step<T>(limit: Duration, f: impl Future<Output = io::Result<T>>) -> Result<T, ClamError> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClamError::Io(e)),
        Err(_) => Err(ClamError::Timeout),
    }
}

async fn connect(
    addresses: &[ClamdAddress],
    limit: Duration,
) -> Result<Pin<Box<dyn Stream>>, ClamError> {
    let mut failures = Vec::new();
    for address in addresses {
        let attempt = match address {
            ClamdAddress::Tcp(a) => timeout(limit, tokio::net::TcpStream::connect(a))
                .await
                .map(|r| r.map(|s| Box::pin(s) as Pin<Box<dyn Stream>>)),
            ClamdAddress::Unix(p) => timeout(limit, connect_unix(p))
                .await
                .map(|r| r.map(|s| Box::pin(s) as Pin<Box<dyn Stream>>)),
        };
        match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => failures.push(format!("{address}: {e}")),
            Err(_) => failures.push(format!("{address}: timed out")),
        }
    }
    Err(ClamError::Connect(failures.join("; ")))
}

#[cfg(unix)]
async fn connect_unix(path: &std::path::Path) -> io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
}

#[cfg(not(unix))]
async fn connect_unix(_: &std::path::Path) -> io::Result<tokio::net::TcpStream> {
    Err(io::Error::other("unix sockets are not available here"))
}

/// Reads up to the NUL (or EOF) that ends a `z` command's reply.
async fn read_reply(
    stream: &mut Pin<Box<dyn Stream>>,
    limit: Duration,
) -> Result<String, ClamError> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = step(limit, stream.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|&b| b == 0) {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_REPLY {
            return Err(ClamError::Protocol("an over-long reply".into()));
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_string())
}

/// What a reply to INSTREAM means.
fn verdict(reply: String) -> Result<ClamVerdict, ClamError> {
    if reply.contains("size limit exceeded") {
        return Ok(ClamVerdict::SizeLimit);
    }
    let body = reply.strip_prefix("stream:").map(str::trim);
    match body {
        Some("OK") => Ok(ClamVerdict::Clean),
        Some(found) if found.ends_with(" FOUND") => {
            let name = found.trim_end_matches(" FOUND").trim();
            Ok(ClamVerdict::Found(name.to_string()))
        }
        _ => Err(ClamError::Protocol(reply)),
    }
}

async fn run(
    addresses: Vec<ClamdAddress>,
    limit: Duration,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<ClamVerdict, ClamError> {
    let mut stream = connect(&addresses, limit).await?;
    let mut sent = step(limit, stream.write_all(b"zINSTREAM\0")).await;
    while sent.is_ok() {
        let Some(chunk) = rx.recv().await else { break };
        for piece in chunk.chunks(MAX_PIECE) {
            let len = u32::try_from(piece.len()).expect("a piece is at most 64 KiB");
            sent = step(limit, async {
                stream.write_all(&len.to_be_bytes()).await?;
                stream.write_all(piece).await
            })
            .await;
            if sent.is_err() {
                break;
            }
        }
    }
    if sent.is_ok() {
        sent = step(limit, stream.write_all(&0u32.to_be_bytes())).await;
    }
    // A failed write may be clamd closing after its size limit: its reply says so.
    match (read_reply(&mut stream, limit).await, sent) {
        (Ok(reply), _) if !reply.is_empty() => verdict(reply),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Ok(())) => Err(ClamError::Protocol("no reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_clamd_writes_them() {
        assert_eq!(verdict("stream: OK".into()).unwrap(), ClamVerdict::Clean);
        assert_eq!(
            verdict("stream: Eicar-Signature FOUND".into()).unwrap(),
            ClamVerdict::Found("Eicar-Signature".into())
        );
        assert_eq!(
            verdict("INSTREAM size limit exceeded. ERROR".into()).unwrap(),
            ClamVerdict::SizeLimit
        );
        assert!(verdict("stream: lstat() failed. ERROR".into()).is_err());
    }

    #[test]
    fn addresses_are_a_port_or_a_socket_path() {
        assert_eq!(
            "127.0.0.1:3310".parse::<ClamdAddress>(),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "/run/clamav/clamd.ctl".parse::<ClamdAddress>(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert!("clamd".parse::<ClamdAddress>().is_err());
    }
}
