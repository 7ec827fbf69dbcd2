use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use attitude_codec::Reply;
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// Response future of [`super::Protocol`]: a local reply, or the inner service's (for EHLO
    /// a positive inner reply is replaced by attitude's capability list).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Local { reply: Option<Reply> },
        Inner {
            #[pin]
            future: F,
            on_success: Option<Reply>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn local(reply: Reply) -> Self {
        Self {
            kind: Kind::Local { reply: Some(reply) },
        }
    }

    pub(super) fn inner(future: F, on_success: Option<Reply>) -> Self {
        Self {
            kind: Kind::Inner { future, on_success },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, BoxError>>,
{
    type Output = Result<Reply, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Local { reply } => {
                Poll::Ready(Ok(reply.take().expect("polled after completion")))
            }
            KindProj::Inner { future, on_success } => {
                let reply = ready!(future.poll(cx))?;
                Poll::Ready(Ok(match on_success.take() {
                    Some(replacement) if reply.is_positive() => replacement,
                    _ => reply,
                }))
            }
        }
    }
}
