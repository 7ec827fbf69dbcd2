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

/// Binds `workers` listening sockets on `addr` with SO_REUSEPORT (the kernel spreads new
/// connections over them); the first fixes the port when `addr` asks for port 0.
pub(super) fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
    name: &str,
) -> Result<Vec<std::net::TcpListener>, String> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s)
            })
            .map_err(|e| {
                format!(
                    "cannot listen on {addr} (listener {name}): {e}; pick another address or stop \
                     what uses it"
                )
            })?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|e| e.to_string())?;
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
