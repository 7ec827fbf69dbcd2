//! PROXY protocol in (v1 and v2, parsed with `ppp`): the real client address a trusted load
//! balancer or proxy puts before the SMTP session. Read exactly, never past the header, so the
//! session's first bytes stay for the driver.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (12 octets).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (the fixed 16 octets plus addresses and a few TLVs).
const V2_MAX: usize = 16 + 512;

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No complete header in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// Not a PROXY header, or a malformed one.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// The connection broke.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `io`. The source address it carries, or `None` for a header
/// that carries none (v1 `UNKNOWN`, v2 `LOCAL`: the proxy's own health checks).
pub async fn read_header(
    io: &mut TcpStream,
    limit: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(limit, read(io))
        .await
        .map_err(|_| ProxyError::Timeout(limit))?
}

async fn read(io: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    // 15 octets are in every header: "PROXY UNKNOWN\r\n" is the shortest.
    let mut buf = vec![0u8; 15];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(V2_SIGNATURE) {
        buf.resize(16, 0);
        io.read_exact(&mut buf[15..]).await?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + len > V2_MAX {
            return Err(ProxyError::Invalid(format!("v2 header of {len} octets")));
        }
        buf.resize(16 + len, 0);
        io.read_exact(&mut buf[16..]).await?;
        let header = ppp::v2::Header::try_from(buf.as_slice())
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        if header.command == ppp::v2::Command::Local {
            // LOCAL: the balancer's own connection (a health check); whatever address block it
            // carries says nothing about a client, and the session keeps the balancer's address.
            return Ok(None);
        }
        return Ok(match header.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Invalid("no PROXY signature".into()));
    }
    // v1: up to CRLF, one octet at a time so as not to read past it.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Invalid(
                "v1 header longer than 107 octets".into(),
            ));
        }
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        buf.push(byte[0]);
    }
    let text = std::str::from_utf8(&buf).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    let header = ppp::v1::Header::try_from(text).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn through(bytes: Vec<u8>) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&bytes).await.unwrap();
        client.write_all(b"EHLO after\r\n").await.unwrap();
        drop(client);
        let result = read_header(&mut server, Duration::from_secs(2)).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (result, rest)
    }

    #[tokio::test]
    async fn v1_v2_and_garbage() {
        let (r, rest) = through(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n".to_vec()).await;
        assert_eq!(r.unwrap(), Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(
            rest, b"EHLO after\r\n",
            "nothing after the header is consumed"
        );
        let (r, _) = through(b"PROXY UNKNOWN\r\n".to_vec()).await;
        assert_eq!(r.unwrap(), None);
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:40001".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:25".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (r, rest) = through(v2).await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:40001".parse().unwrap()));
        assert_eq!(rest, b"EHLO after\r\n");
        // LOCAL keeps the balancer's address, whatever address block it carries.
        for block in ["10.9.9.9:1234", "0.0.0.0:0"] {
            let local = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Local,
                ppp::v2::Protocol::Stream,
                (
                    block.parse::<SocketAddr>().unwrap(),
                    "10.0.0.1:25".parse::<SocketAddr>().unwrap(),
                ),
            )
            .build()
            .unwrap();
            let (r, rest) = through(local).await;
            assert_eq!(r.unwrap(), None, "LOCAL with {block}");
            assert_eq!(rest, b"EHLO after\r\n");
        }
        let (r, _) = through(b"EHLO no-header.example\r\n".to_vec()).await;
        assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");
    }
}
