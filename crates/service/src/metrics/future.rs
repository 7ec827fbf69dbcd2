use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use attitude_codec::Reply;
use pin_project_lite::pin_project;

use super::SmtpMetrics;

pin_project! {
    /// Response future of [`super::SmtpMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<SmtpMetrics>,
        label: Option<&'static str>,
        txn_started: Option<Instant>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(
        inner: F,
        metrics: Arc<SmtpMetrics>,
        label: Option<&'static str>,
        txn_started: Option<Instant>,
    ) -> Self {
        Self {
            inner,
            metrics,
            label,
            txn_started,
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, E>>,
{
    type Output = Result<Reply, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(label), Ok(reply)) = (this.label, &result) {
            this.metrics.command(label, reply.class());
            if *label == "DATA_END" {
                match reply.class() {
                    2 => this.metrics.accepted.increment(1),
                    4 => this.metrics.deferred.increment(1),
                    _ => this.metrics.rejected.increment(1),
                }
                if let Some(started) = this.txn_started {
                    this.metrics
                        .transaction_seconds
                        .record(started.elapsed().as_secs_f64());
                }
            }
        }
        Poll::Ready(result)
    }
}
