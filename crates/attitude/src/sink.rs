//! `attitude sink`: a small SMTP backend that accepts every message, counts it and optionally
//! writes it to a Maildir. For the quick start, tests and benchmarks; it delivers nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use attitude_balance::Offer;
use attitude_codec::Extension;
use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_service::driver::{self, DriverConfig, DriverMetrics, Shutdown};
use attitude_service::protocol::{BackendOffer, ProtocolConfig, ProtocolLayer, relayed};
use attitude_service::{BoxError, BoxFuture, DataOutcome, Event, Request, Session};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::server::{announce, bind, shutdown_signal};

/// Settings of `attitude sink`.
#[derive(Debug, Clone)]
pub(crate) struct SinkOptions {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Write each message to `DIR/new/` (Maildir), if set.
    pub maildir: Option<PathBuf>,
    /// Greeting name.
    pub hostname: String,
    /// Largest message accepted.
    pub max_message_size: u64,
}

#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    sequence: AtomicU64,
}

/// The sink's command service: 250 to everything, the message counted at end of data.
#[derive(Debug, Clone)]
struct SinkService {
    maildir: Option<Arc<PathBuf>>,
    counters: Arc<Counters>,
    message: Arc<Mutex<Vec<u8>>>,
}

fn reply(code: u16, s: (u8, u16, u16), text: &'static str) -> Reply {
    Reply::new(code, EnhancedStatus::new(s.0, s.1, s.2), text)
}

impl Service<Request> for SinkService {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let immediate = |r: Reply| -> Self::Future { Box::pin(std::future::ready(Ok(r))) };
        match req.event {
            Event::Command(Command::Mail(_)) => {
                self.message.lock().expect("sink lock").clear();
                immediate(reply(250, (2, 1, 0), "Sender OK"))
            }
            Event::Command(Command::Rcpt(_)) => immediate(reply(250, (2, 1, 5), "Recipient OK")),
            Event::Command(Command::Data) => {
                immediate(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
            }
            Event::DataChunk(chunk) => {
                if self.maildir.is_some() {
                    self.message
                        .lock()
                        .expect("sink lock")
                        .extend_from_slice(&chunk);
                }
                immediate(reply(250, (2, 0, 0), "OK"))
            }
            Event::DataEnd(DataOutcome::Failed(r)) => immediate(r),
            Event::DataEnd(DataOutcome::Complete) => {
                let n = self.counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
                let Some(dir) = self.maildir.clone() else {
                    return immediate(reply(250, (2, 0, 0), "Ok: counted"));
                };
                let body = std::mem::take(&mut *self.message.lock().expect("sink lock"));
                let seq = self.counters.sequence.fetch_add(1, Ordering::Relaxed);
                let session = req.session.clone();
                Box::pin(async move {
                    let txn = session.transaction.as_ref();
                    let mut text = format!(
                        "Return-Path: <{}>\r\n",
                        txn.map_or("", |t| t.mail.address.as_str())
                    );
                    for rcpt in txn.map(|t| t.rcpts.as_slice()).unwrap_or_default() {
                        text.push_str(&format!("Delivered-To: {rcpt}\r\n"));
                    }
                    let mut file = text.into_bytes();
                    file.extend_from_slice(&body);
                    match write_maildir(&dir, seq, &file).await {
                        Ok(()) => Ok(reply(250, (2, 0, 0), "Ok: written to Maildir")),
                        Err(error) => {
                            tracing::error!(%error, "sink: cannot write message {n}");
                            Ok(reply(
                                451,
                                (4, 3, 0),
                                "Cannot write message; try again later",
                            ))
                        }
                    }
                })
            }
            Event::Command(Command::Quit) | Event::Close => immediate(reply(221, (2, 0, 0), "Bye")),
            _ => immediate(reply(250, (2, 0, 0), "OK")),
        }
    }
}

/// Maildir delivery: write to `tmp/`, then rename into `new/`.
async fn write_maildir(dir: &Path, seq: u64, content: &[u8]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.{}_{}.{}.attitude-sink",
        now.as_secs(),
        std::process::id(),
        seq,
        now.subsec_micros()
    );
    let tmp = dir.join("tmp").join(&name);
    tokio::fs::write(&tmp, content).await?;
    tokio::fs::rename(&tmp, dir.join("new").join(&name)).await
}

/// Runs the sink until SIGTERM/SIGINT.
pub(crate) async fn run(options: SinkOptions) -> Result<(), String> {
    if let Some(dir) = &options.maildir {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create Maildir {}: {e}", dir.join(sub).display()))?;
        }
    }
    let listener = bind(options.listen, "sink SMTP").await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    announce(&[("smtp", addr)]);
    tracing::info!(%addr, maildir = ?options.maildir, "attitude sink accepting every message");

    let counters = Arc::new(Counters::default());
    let driver_config = Arc::new(DriverConfig {
        hostname: options.hostname.clone(),
        ..DriverConfig::default()
    });
    // The sink takes every extension attitude relays (it keeps or counts what it is given).
    let offer = Offer {
        extensions: relayed()
            .without(Extension::RequireTls)
            .with(Extension::Chunking),
        size_limit: None,
    };
    let protocol = ProtocolLayer::new(ProtocolConfig {
        hostname: options.hostname.clone(),
        max_message_size: options.max_message_size,
        backends: Some(BackendOffer::new(move || offer)),
        ..ProtocolConfig::default()
    });
    let metrics = DriverMetrics::register();
    let maildir = options.maildir.map(Arc::new);
    let tracker = TaskTracker::new();
    let shutdown = Shutdown::default();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut ids = 0u64;
    loop {
        let (stream, client) = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        ids += 1;
        let session = Session::new(ids, client, stream.local_addr().unwrap_or(client));
        let service = protocol.layer(SinkService {
            maildir: maildir.clone(),
            counters: counters.clone(),
            message: Arc::default(),
        });
        tracker.spawn(driver::drive(
            attitude_edge::Stream::Plain(stream),
            session,
            service,
            driver_config.clone(),
            shutdown.clone(),
            metrics.clone(),
        ));
    }
    shutdown.drain.cancel();
    tracker.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        shutdown.hard.cancel();
    }
    let total = counters.messages.load(Ordering::Relaxed);
    tracing::info!(messages = total, "sink stopped");
    println!("sink messages={total}");
    Ok(())
}
