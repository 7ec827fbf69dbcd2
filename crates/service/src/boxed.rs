//! A boxed command service.
//!
//! `tower::util::BoxService<Request, Reply, BoxError>` would do, but its trait object names the
//! error type in an associated-type binding, and rustc then fails to prove the session future
//! `Send` ("one type is more general than the other"). This box hides the error type behind a
//! trait of its own.

use std::task::{Context, Poll};

use attitude_codec::Reply;
use tower_service::Service;

use crate::request::Request;
use crate::{BoxError, BoxFuture};

trait ErasedCommand: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    fn call(&mut self, req: Request) -> BoxFuture<Result<Reply, BoxError>>;
}

impl<S> ErasedCommand for S
where
    S: Service<Request, Response = Reply, Error = BoxError> + Send,
    S::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request) -> BoxFuture<Result<Reply, BoxError>> {
        Box::pin(Service::call(self, req))
    }
}

/// Any command service, boxed (for stacks whose layers are chosen by configuration).
pub struct BoxCommand(Box<dyn ErasedCommand>);

impl BoxCommand {
    /// Boxes `service`.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request, Response = Reply, Error = BoxError> + Send + 'static,
        S::Future: Send + 'static,
    {
        Self(Box::new(service))
    }
}

impl std::fmt::Debug for BoxCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxCommand")
    }
}

impl Service<Request> for BoxCommand {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.0.call(req)
    }
}
