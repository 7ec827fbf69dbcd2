//! Passing a held message on: the layers that hold a message until a verdict (the scanners,
//! the milters) call their inner service from a response future, then hand it the message.

use std::sync::{Arc, Mutex};

use attitude_codec::Reply;
use attitude_layers::slot::call_later;
use attitude_service::{BoxError, Event, Request};
use bytes::Bytes;
use tower_service::Service;

/// Largest piece a held message is passed on in.
const PIECE: usize = 64 * 1024;

/// Calls `inner` from a response future, once it is ready.
pub(crate) async fn ready_call<S>(inner: &Arc<Mutex<S>>, req: Request) -> Result<Reply, BoxError>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    std::future::poll_fn(|cx| inner.lock().expect("inner service lock").poll_ready(cx)).await?;
    call_later(inner, req).await
}

/// Passes a held message on: its DATA (or BDAT), then `content` in pieces. The first reply
/// that is an error is returned: the message fails with it.
pub(crate) async fn replay<S>(
    inner: &Arc<Mutex<S>>,
    opening: Request,
    content: Bytes,
) -> Result<Option<Reply>, BoxError>
where
    S: Service<Request, Response = Reply, Error = BoxError>,
{
    let session = opening.session.clone();
    let reply = ready_call(inner, opening).await?;
    if reply.code() >= 400 {
        return Ok(Some(reply));
    }
    let mut at = 0;
    while at < content.len() {
        let end = (at + PIECE).min(content.len());
        let piece = content.slice(at..end);
        at = end;
        let reply = ready_call(
            inner,
            Request {
                session: session.clone(),
                event: Event::DataChunk(piece),
            },
        )
        .await?;
        if reply.code() >= 400 {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}
