use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use attitude_codec::{Command, Reply};
use attitude_engines::clamav::ClamScan;
use attitude_engines::rspamd::Envelope;
use attitude_layers::slot::Slot;
use attitude_layers::{Either, Mode};
use attitude_service::{BoxError, BoxFuture, DataOutcome, Event, Request, Session, replies};
use bytes::Bytes;
use tower_service::Service;

use crate::held::{ready_call, replay};

use super::headers;
use super::layer::{Fallback, ScanConfig};
use super::verdict::{ClamOutcome, RspamdOutcome, decide};
use crate::content::ByteBudget;

/// The response future of [`Scan`].
pub type ResponseFuture<F> = Either<F, BoxFuture<Result<Reply, BoxError>>>;

/// rspamd's copy of the message, reserved in the byte budget.
struct Copy {
    bytes: Vec<u8>,
    reserved: usize,
    budget: Arc<ByteBudget>,
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// One message being scanned.
struct Txn {
    /// The DATA (or first BDAT) request, not passed on yet: the message is held until the
    /// verdict, because rspamd may change its header.
    held: Option<Request>,
    /// ClamAV's scan, fed as the message arrives.
    clam: Option<ClamScan>,
    /// The message passed ClamAV's `max_size`.
    clam_oversize: bool,
    /// rspamd's copy.
    copy: Option<Copy>,
    /// Why rspamd does not check this message: its `attitude_scans_total` result.
    rspamd_skip: Option<&'static str>,
    /// Octets so far.
    size: u64,
}

/// Scans each message with ClamAV and rspamd before the backend commits it; see the module
/// docs.
pub struct Scan<S> {
    inner: Slot<S>,
    config: Arc<ScanConfig>,
    txn: Option<Txn>,
}

impl<S> std::fmt::Debug for Scan<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").finish_non_exhaustive()
    }
}

/// This layer's own answer (the inner service is not called).
fn local<F>(reply: Reply) -> ResponseFuture<F> {
    Either::rejected(Box::pin(std::future::ready(Ok(reply))))
}

/// What rspamd is told about the message of `session`.
fn envelope(session: &Session, settings_id: Option<&String>) -> Envelope {
    let txn = session.transaction.as_ref();
    Envelope {
        ip: Some(session.client.ip().to_canonical().to_string()),
        helo: session.helo.as_ref().map(|h| h.name.clone()),
        from: txn.map(|t| t.mail.address.clone()),
        rcpts: txn.map(|t| t.rcpts.clone()).unwrap_or_default(),
        user: session.auth.clone(),
        queue_id: Some(format!("{}.{}", session.id, session.messages + 1)),
        tls: session
            .tls
            .as_ref()
            .map(|t| (t.version.to_string(), t.cipher.to_string())),
        // attitude does not verify the client's reverse DNS: rspamd is not told a name.
        hostname: None,
        settings_id: settings_id.cloned(),
    }
}

impl<S> Scan<S> {
    /// Wraps `inner` (shared: a held message is passed on from a response future).
    pub fn new(inner: Slot<S>, config: Arc<ScanConfig>) -> Self {
        Self {
            inner,
            config,
            txn: None,
        }
    }

    /// A new message: which engines scan it, and whether it is held.
    fn begin(&self, req: &Request) -> Txn {
        let config = &self.config;
        let session = &req.session;
        let mut txn = Txn {
            held: None,
            clam: config.clamav.as_ref().map(|c| c.clamd.start()),
            clam_oversize: false,
            copy: None,
            rspamd_skip: None,
            size: 0,
        };
        if let Some(rspamd) = &config.rspamd {
            let ip = session.client.ip().to_canonical();
            if rspamd.skip_authenticated && session.auth.is_some() {
                txn.rspamd_skip = Some("skipped_authenticated");
            } else if rspamd.skip_trusted && config.trusted.iter().any(|n| n.contains(&ip)) {
                txn.rspamd_skip = Some("skipped_trusted");
            } else {
                txn.copy = Some(Copy {
                    bytes: Vec::new(),
                    reserved: 0,
                    budget: config.budget.clone(),
                });
                if rspamd.headers && rspamd.mode == Mode::Enforce {
                    txn.held = Some(req.clone());
                }
            }
        }
        txn
    }

    /// rspamd's copy stops (`why`): a held message is to be passed on as it is so far.
    fn stop_copy(txn: &mut Txn, why: &'static str) -> Option<(Request, Bytes)> {
        let mut copy = txn.copy.take()?;
        txn.rspamd_skip = Some(why);
        let bytes = Bytes::from(std::mem::take(&mut copy.bytes));
        txn.held.take().map(|opening| (opening, bytes))
    }
}

impl<S> Service<Request> for Scan<S>
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &req.event {
            Event::Command(cmd @ (Command::Data | Command::Bdat { .. })) => {
                let data = matches!(cmd, Command::Data);
                if self.txn.is_none() {
                    let txn = self.begin(&req);
                    let held = txn.held.is_some();
                    self.txn = Some(txn);
                    if held {
                        // The relay's own first answer (it also answers 354 before the
                        // backend's): the backend is asked when the verdict is in.
                        return local(if data {
                            replies::start_data()
                        } else {
                            replies::ok()
                        });
                    }
                } else if self.txn.as_ref().is_some_and(|t| t.held.is_some()) {
                    return local(replies::ok());
                }
                Either::inner(self.inner.call(req))
            }
            Event::DataChunk(_) => self.chunk(req),
            Event::DataEnd(DataOutcome::Complete) => match self.txn.take() {
                None => Either::inner(self.inner.call(req)),
                Some(txn) => {
                    let inner = self.inner.handle().expect("a shared inner service");
                    Either::rejected(Box::pin(verdict(inner, self.config.clone(), txn, req)))
                }
            },
            Event::DataEnd(DataOutcome::Failed(_)) | Event::Close | Event::Command(_) => {
                // The message ended another way (or never began): its scans are dropped.
                self.txn = None;
                Either::inner(self.inner.call(req))
            }
            _ => Either::inner(self.inner.call(req)),
        }
    }
}

impl<S> Scan<S>
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// A chunk of the message: to clamd, to rspamd's copy, and on to the backend unless held.
    fn chunk(&mut self, req: Request) -> ResponseFuture<S::Future> {
        let Event::DataChunk(chunk) = &req.event else {
            unreachable!("called for chunks only")
        };
        let Some(txn) = self.txn.as_mut() else {
            return Either::inner(self.inner.call(req));
        };
        let config = &self.config;
        let chunk = chunk.clone();
        txn.size += chunk.len() as u64;
        let mut feeder = None;
        if let Some(policy) = &config.clamav {
            if txn.size > policy.max_size {
                txn.clam = None;
                txn.clam_oversize = true;
            } else if let Some(scan) = &txn.clam {
                config.metrics.clamav_bytes.increment(chunk.len() as u64);
                feeder = Some(scan.feeder());
            }
        }
        let mut flush = None;
        if let Some(policy) = &config.rspamd
            && txn.copy.is_some()
        {
            if txn.size > policy.max_size {
                flush = Self::stop_copy(txn, "skipped_oversize");
            } else if config.budget.try_reserve(chunk.len()) {
                let copy = txn.copy.as_mut().expect("checked above");
                copy.reserved += chunk.len();
                copy.bytes.extend_from_slice(&chunk);
            } else {
                config.metrics.over_budget.increment(1);
                if config.on_over_budget == Fallback::Tempfail {
                    self.txn = None;
                    return local(replies::over_budget());
                }
                flush = Self::stop_copy(txn, "skipped_budget");
            }
        }
        let held = txn.held.is_some();
        if held {
            return Either::rejected(Box::pin(async move {
                if let Some(feeder) = feeder {
                    feeder.feed(chunk).await;
                }
                Ok(replies::ok())
            }));
        }
        match (flush, feeder) {
            (None, None) => Either::inner(self.inner.call(req)),
            (None, Some(feeder)) => {
                let future = self.inner.call(req);
                Either::rejected(Box::pin(async move {
                    feeder.feed(chunk).await;
                    future.await
                }))
            }
            (Some((opening, content)), feeder) => {
                let inner = self.inner.handle().expect("a shared inner service");
                Either::rejected(Box::pin(async move {
                    if let Some(feeder) = feeder {
                        feeder.feed(chunk).await;
                    }
                    if let Some(failed) = replay(&inner, opening, content).await? {
                        return Ok(failed);
                    }
                    ready_call(&inner, req).await
                }))
            }
        }
    }
}

/// End of data: both engines' verdicts (concurrently), then the message refused, or passed on
/// (as held, with the header changes asked for).
async fn verdict<S>(
    inner: Arc<Mutex<S>>,
    config: Arc<ScanConfig>,
    mut txn: Txn,
    req: Request,
) -> Result<Reply, BoxError>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    let started = Instant::now();
    let message = txn
        .copy
        .as_mut()
        .map(|copy| Bytes::from(std::mem::take(&mut copy.bytes)));
    let clam = async {
        if config.clamav.is_none() {
            return ClamOutcome::Off;
        }
        match txn.clam.take() {
            Some(scan) => {
                let outcome = ClamOutcome::Scanned(scan.finish().await);
                config
                    .metrics
                    .clamav_seconds
                    .record(started.elapsed().as_secs_f64());
                outcome
            }
            None => ClamOutcome::Oversize,
        }
    };
    let rspamd = async {
        let Some(policy) = &config.rspamd else {
            return RspamdOutcome::Off;
        };
        match (&message, txn.rspamd_skip) {
            (Some(message), _) => {
                config.metrics.rspamd_bytes.increment(message.len() as u64);
                let envelope = envelope(&req.session, policy.settings_id.as_ref());
                let outcome =
                    RspamdOutcome::Checked(policy.rspamd.check(&envelope, message.clone()).await);
                config
                    .metrics
                    .rspamd_seconds
                    .record(started.elapsed().as_secs_f64());
                outcome
            }
            (None, why) => {
                RspamdOutcome::Skipped(why.expect("a reason whenever rspamd has no copy"))
            }
        }
    };
    let (clam, rspamd) = futures::join!(clam, rspamd);
    let decision = decide(&config, &req, clam, rspamd, txn.held.is_some());
    let session = req.session.clone();
    let failed = |reply| Request {
        session: session.clone(),
        event: Event::DataEnd(DataOutcome::Failed(reply)),
    };
    if let Some(reply) = decision.refusal {
        // Not held: the relay aborts the backend transaction before its final dot. Held: the
        // backend never saw the message; the relay resets its transaction.
        return ready_call(&inner, failed(reply)).await;
    }
    if let Some(opening) = txn.held.take() {
        let message = message.unwrap_or_default();
        let content = if decision.edits.is_empty() {
            message
        } else {
            Bytes::from(headers::apply(&message, &decision.edits))
        };
        if let Some(reply) = replay(&inner, opening, content).await? {
            return ready_call(&inner, failed(reply)).await;
        }
    }
    // The copy's share of the budget is given back once the backend has the message.
    let reply = ready_call(&inner, req).await;
    drop(txn);
    reply
}
