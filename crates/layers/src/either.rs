use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's response, or the rejection's.
    pub struct Either<F, RF> {
        #[pin]
        kind: Kind<F, RF>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, RF> {
        Inner { #[pin] future: F },
        Rejected { #[pin] future: RF },
    }
}

impl<F, RF> Either<F, RF> {
    /// Admitted: the inner service answers.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// Refused: the [`Reject`](crate::Reject) implementation answers.
    pub fn rejected(future: RF) -> Self {
        Self {
            kind: Kind::Rejected { future },
        }
    }
}

impl<F, RF, T, E> Future for Either<F, RF>
where
    F: Future<Output = Result<T, E>>,
    RF: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Rejected { future } => future.poll(cx),
        }
    }
}
