use std::sync::Arc;
use std::task::{Context, Poll};

use attitude_codec::Reply;
use tower_service::Service;

use super::{ResponseFuture, SmtpMetrics};
use crate::request::{Event, Request};

/// Records SMTP metrics for each request; see the module docs.
#[derive(Debug, Clone)]
pub struct SmtpMetricsService<S> {
    inner: S,
    metrics: Arc<SmtpMetrics>,
}

impl<S> SmtpMetricsService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<SmtpMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S> Service<Request> for SmtpMetricsService<S>
where
    S: Service<Request, Response = Reply>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let label = match &req.event {
            Event::DataChunk(_) | Event::Close | Event::AuthLine(_) => None,
            event => Some(event.label()),
        };
        let txn_started = match &req.event {
            Event::DataEnd(_) => req.session.transaction.as_ref().map(|t| t.started),
            _ => None,
        };
        ResponseFuture::new(
            self.inner.call(req),
            self.metrics.clone(),
            label,
            txn_started,
        )
    }
}
