//! How a connection to a backend is made: over TCP ([`TcpDial`], what attitude uses), or over
//! any in-process byte stream a [`Dial`] hands out that can tell [`Transport::quiet`] (the test
//! harness's scripted backends run over `tokio::io::duplex`, with a paused clock).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to a backend.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug + 'static {
    /// Between transactions: `true` while nothing arrived unasked (a backend that timed the
    /// connection out sends a 421 or closes it), so the connection may serve another one.
    fn quiet(&self) -> bool;
}

impl Transport for TcpStream {
    fn quiet(&self) -> bool {
        // A peek: under TLS the bytes (a close_notify, say) are the TLS layer's to read.
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        self.poll_peek(&mut cx, &mut buf).is_pending()
    }
}

/// Opens connections to backends.
pub trait Dial: Send + Sync + fmt::Debug + 'static {
    /// A connection to `addr`.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Transport>>>;
}

/// TCP, with Nagle off (small writes, such as commands and the final dot, must not wait for
/// Nagle and delayed ACK).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDial;

impl Dial for TcpDial {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Transport>>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Transport>)
        })
    }
}
