//! A connection that may switch to TLS in the middle (STARTTLS), on either side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a TLS session negotiated, for logs, metrics and policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: &'static str,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
}

impl TlsInfo {
    fn of(common: &rustls::CommonState) -> Self {
        Self {
            version: common
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            cipher: common
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown"),
        }
    }
}

/// A byte stream in the clear or in TLS. `Closed` is what is left while an upgrade owns the
/// socket, or after it failed: every operation on it is an error.
#[derive(Debug)]
pub enum Stream<IO> {
    /// In the clear.
    Plain(IO),
    /// TLS, accepted (client side of the session) or initiated (towards a backend).
    Tls(Box<tokio_rustls::TlsStream<IO>>),
    /// No socket.
    Closed,
}

impl<IO> Stream<IO> {
    /// What TLS negotiated, if this is TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            Stream::Tls(tls) => Some(match tls.as_ref() {
                tokio_rustls::TlsStream::Server(s) => TlsInfo::of(s.get_ref().1),
                tokio_rustls::TlsStream::Client(s) => TlsInfo::of(s.get_ref().1),
            }),
            _ => None,
        }
    }

    /// The socket underneath.
    pub fn get_ref(&self) -> Option<&IO> {
        match self {
            Stream::Plain(io) => Some(io),
            Stream::Tls(tls) => Some(tls.get_ref().0),
            Stream::Closed => None,
        }
    }

    /// Takes the plain socket out for an upgrade, leaving `Closed`; `None` (and nothing
    /// changed) when the stream is not plain.
    pub fn take_plain(&mut self) -> Option<IO> {
        match std::mem::replace(self, Stream::Closed) {
            Stream::Plain(io) => Some(io),
            other => {
                *self = other;
                None
            }
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream closed by a failed TLS upgrade",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
            Stream::Closed => false,
        }
    }
}
