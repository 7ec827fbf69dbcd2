use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::{Either, Mode};
use attitude_service::{BoxError, DataOutcome, Event, Request, answer, replies};
use tower_service::Service;

use super::attachments::{Blocked, header_may_name_a_part};
use super::layer::ByteBudget;
use super::{ContentConfig, HeaderAction, ResponseFuture, first_match};

/// The copy of the message in progress.
struct Copy {
    bytes: Vec<u8>,
    budget: Arc<ByteBudget>,
    /// Only the header section is needed, and it is complete.
    headers_done: bool,
    /// The copy stopped (over a bound, in dry-run mode): nothing to check.
    abandoned: bool,
    /// The header says the message is one opaque part: only the header is kept, and the body
    /// is scanned chunk by chunk for uuencoded blocks.
    streaming: bool,
    /// What that scan found.
    uuencoded: Option<Blocked>,
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.budget.release(self.bytes.len());
    }
}

/// Checks each message's headers and attachments at end of data; see the module docs.
pub struct Content<S> {
    inner: S,
    config: Arc<ContentConfig>,
    copy: Option<Copy>,
}

impl<S> std::fmt::Debug for Content<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content").finish_non_exhaustive()
    }
}

impl<S> Content<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: Arc<ContentConfig>) -> Self {
        Self {
            inner,
            config,
            copy: None,
        }
    }

    /// Adds a chunk to the copy; the reply that fails the message when it cannot be kept.
    fn keep(&mut self, chunk: &[u8]) -> Option<Reply> {
        let config = &self.config;
        let copy = self.copy.get_or_insert_with(|| Copy {
            bytes: Vec::new(),
            budget: config.budget.clone(),
            headers_done: false,
            abandoned: false,
            streaming: false,
            uuencoded: None,
        });
        if copy.abandoned {
            return None;
        }
        if copy.streaming {
            if copy.uuencoded.is_none()
                && let Some(rules) = &config.attachments
            {
                copy.uuencoded = rules.scan_uuencoded(chunk);
            }
            return None;
        }
        if copy.headers_done {
            return None;
        }
        let mut take = chunk;
        // Chunks are whole lines: the header section ends at the first empty one.
        let mut header_end = None;
        let mut at = 0;
        for line in chunk.split_inclusive(|&b| b == b'\n') {
            at += line.len();
            if line == b"\r\n" {
                header_end = Some(at);
                break;
            }
        }
        if let Some(end) = header_end {
            match &config.attachments {
                None => {
                    copy.headers_done = true;
                    take = &chunk[..end];
                }
                Some(rules) => {
                    let head_may_name = header_may_name_a_part(&copy.bytes)
                        || header_may_name_a_part(&chunk[..end]);
                    if !head_may_name {
                        // One opaque part: keep the header (for header checks), stream the rest.
                        copy.streaming = true;
                        copy.uuencoded = rules.scan_uuencoded(&chunk[end..]);
                        take = &chunk[..end];
                    }
                }
            }
        }
        let refusal = if copy.bytes.len() + take.len() > config.max_message {
            Reply::new(
                552,
                EnhancedStatus::new(5, 3, 4),
                "Message too big for the content checks",
            )
        } else if !config.budget.try_reserve(take.len()) {
            config.over_budget.increment(1);
            replies::over_budget()
        } else {
            copy.bytes.extend_from_slice(take);
            return None;
        };
        if config.mode == Mode::Enforce {
            self.copy = None;
            Some(refusal)
        } else {
            tracing::info!(reply = %refusal, "message would not be checked (dry-run): passed unchecked");
            copy.abandoned = true;
            None
        }
    }

    /// The verdict on the finished copy: the refusal, if any.
    fn verdict(&self, copy: &Copy, req: &Request) -> Option<Reply> {
        let config = &self.config;
        let enforce = config.mode == Mode::Enforce;
        if copy.abandoned {
            return None;
        }
        if !config.header_checks.is_empty() {
            match first_match(&config.header_checks, &copy.bytes) {
                Some((check, header)) => {
                    let reply = match check.action {
                        HeaderAction::Reject => {
                            Reply::new(554, EnhancedStatus::new(5, 7, 1), check.text.clone())
                        }
                        HeaderAction::Defer => {
                            Reply::new(451, EnhancedStatus::new(4, 7, 1), check.text.clone())
                        }
                    };
                    config.header_decisions.refused(reply.code(), enforce);
                    tracing::info!(session = req.session.id, client = %req.session.client, header = %header.chars().take(200).collect::<String>(), reply = %reply, dry_run = !enforce, "header check matched");
                    return Some(reply);
                }
                None => config.header_decisions.allow.increment(1),
            }
        }
        if let Some(rules) = &config.attachments {
            let found = if copy.streaming {
                copy.uuencoded.clone()
            } else {
                rules.scan(&copy.bytes)
            };
            match found {
                Some(blocked) => {
                    let reply = Reply::new(554, EnhancedStatus::new(5, 7, 1), blocked.to_string());
                    config.attachment_decisions.refused(554, enforce);
                    tracing::info!(session = req.session.id, client = %req.session.client, attachment = %blocked.name, dry_run = !enforce, "attachment refused");
                    return Some(reply);
                }
                None => config.attachment_decisions.allow.increment(1),
            }
        }
        None
    }
}

impl<S> Service<Request> for Content<S>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if !self.config.active() {
            return Either::inner(self.inner.call(req));
        }
        match &req.event {
            Event::DataChunk(chunk) => {
                if let Some(reply) = self.keep(chunk) {
                    // The driver fails the message: the relay gets `DataEnd(Failed)` and aborts.
                    return answer(reply);
                }
            }
            Event::DataEnd(DataOutcome::Complete) => {
                if let Some(copy) = self.copy.take()
                    && let Some(reply) = self.verdict(&copy, &req)
                    && self.config.mode == Mode::Enforce
                {
                    // The relay aborts the backend transaction and answers with this reply.
                    req.event = Event::DataEnd(DataOutcome::Failed(reply));
                }
            }
            Event::DataEnd(DataOutcome::Failed(_))
            | Event::Close
            | Event::Command(Command::Rset | Command::Mail(_) | Command::Data) => {
                self.copy = None;
            }
            _ => {}
        }
        Either::inner(self.inner.call(req))
    }
}
