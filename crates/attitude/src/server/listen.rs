//! Listening sockets: one per worker thread and listener (SO_REUSEPORT), the admin socket, and
//! the announcement scripts and tests read.

use std::io::Write as _;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// Binds `addr`, with an error that says what to do.
pub(crate) async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} ({what}): {e}; pick another address or stop what uses it")
    })
}

/// Prints the bound addresses on stdout (one line, for scripts and tests).
pub(crate) fn announce(parts: &[(&str, std::net::SocketAddr)]) {
    let line: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {}", line.join(" "));
    let _ = out.flush();
}

/// Why a listening socket could not be bound.
#[derive(Debug)]
pub(super) struct BindError {
    addr: SocketAddr,
    name: String,
    source: std::io::Error,
}

impl BindError {
    /// The address family is not there (no IPv6 on this host, say).
    pub(super) fn family_missing(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(97 | 99)) // EAFNOSUPPORT, EADDRNOTAVAIL
    }
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen on {} (listener {}): {}; pick another address or stop what uses it",
            self.addr, self.name, self.source
        )
    }
}

/// Binds `workers` listening sockets on `addr` with SO_REUSEPORT (the kernel spreads new
/// connections over them); the first fixes the port when `addr` asks for port 0. An IPv6
/// socket is IPv6-only, so `[::]:25` binds beside `0.0.0.0:25`.
pub(super) fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
    name: &str,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                if addr.is_ipv6() {
                    // `[::]:25` beside `0.0.0.0:25`: each family on its own socket (and no
                    // v4-mapped clients on the IPv6 one, whatever the system default).
                    s.set_only_v6(true)?;
                }
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s)
            })
            .map_err(|source| BindError {
                addr,
                name: name.to_owned(),
                source,
            })?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|source| BindError {
            addr,
            name: name.to_owned(),
            source,
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// What the announcement names: each listener by its name, the first also as `smtp` (scripts
/// and tests read that one).
pub(super) fn announced(bound: &[(String, SocketAddr)]) -> Vec<(String, SocketAddr)> {
    let mut announced: Vec<(String, SocketAddr)> = bound
        .iter()
        .enumerate()
        .map(|(i, (name, addr))| {
            (
                if i == 0 {
                    "smtp".to_string()
                } else {
                    name.clone()
                },
                *addr,
            )
        })
        .collect();
    if bound.len() > 1 || bound.first().is_some_and(|(name, _)| name != "smtp") {
        announced.extend(bound.iter().take(1).cloned());
    }
    announced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_wildcards_bind_side_by_side_on_one_port() {
        // Bound for a moment, reached over loopback only.
        let v4 = bind_reuseport("0.0.0.0:0".parse().unwrap(), 1, "mx").unwrap();
        let port = v4[0].local_addr().unwrap().port();
        let v6 = bind_reuseport(format!("[::]:{port}").parse().unwrap(), 1, "mx")
            .expect("[::] beside 0.0.0.0 on the same port (IPV6_V6ONLY)");
        for (to, listener) in [("127.0.0.1", &v4[0]), ("[::1]", &v6[0])] {
            let client = std::net::TcpStream::connect(format!("{to}:{port}")).unwrap();
            listener.set_nonblocking(false).unwrap();
            let (_, from) = listener.accept().unwrap();
            assert_eq!(from, client.local_addr().unwrap());
        }
    }
}
