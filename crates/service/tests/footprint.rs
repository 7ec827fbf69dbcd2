//! What an idle session's future costs: every waiting session holds one, so its size is part of
//! the idle-memory figure (README, performance). A change that makes it grow fails here first.

use std::sync::Arc;

use attitude_codec::Reply;
use attitude_edge::Stream;
use attitude_service::driver::{self, DriverConfig, DriverMetrics, Shutdown};
use attitude_service::{BoxCommand, BoxError, Request, Session};

/// The session future's size with the binary's service type (a boxed command stack) over TCP:
/// 688 bytes with Rust 1.95 (1,192 before the driver stopped holding itself twice, the run loop
/// stopped keeping room for a frame and the stress switch became a flag and a `Notify`).
const MAX_SESSION_FUTURE: usize = 720;

#[tokio::test]
async fn a_waiting_session_future_stays_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let service = BoxCommand::new(tower::service_fn(|_: Request| async {
        Ok::<_, BoxError>(Reply::plain(250, "ok"))
    }));
    let session = driver::drive(
        Stream::Plain(client),
        Session::new(1, addr, addr),
        service,
        Arc::new(DriverConfig::default()),
        Shutdown::default(),
        DriverMetrics::register(),
    );
    let size = std::mem::size_of_val(&session);
    assert!(
        size <= MAX_SESSION_FUTURE,
        "the session future grew to {size} bytes (at most {MAX_SESSION_FUTURE}): every idle \
         session holds it; box what only some sessions need (docs/design.md, memory per idle \
         session)"
    );
}
