//! `[proxy_protocol]` at accept time: who may send a PROXY header, and how long it may take.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attitude_edge::proxy;
use ipnet::IpNet;
use metrics::Counter;
use tokio::net::TcpStream;

/// `[proxy_protocol]` at accept time: who may send a header, and how long it may take.
#[derive(Clone)]
pub(crate) struct ProxyIn {
    pub(super) enabled: bool,
    sources: Arc<[IpNet]>,
    timeout: Duration,
    results: [Counter; 5],
}

impl ProxyIn {
    pub(super) fn new(config: &crate::config::ProxyProtocol, enabled: bool) -> Self {
        let result =
            |r: &'static str| metrics::counter!("attitude_proxy_protocol_total", "result" => r);
        Self {
            enabled,
            sources: config.sources.clone().into(),
            timeout: config.header_timeout,
            results: [
                result("ok"),
                result("local"),
                result("untrusted"),
                result("invalid"),
                result("timeout"),
            ],
        }
    }

    /// Reads the header of a connection from `peer` in a task of its own, and queues the
    /// connection with the client address it carries; a peer outside `sources` is closed.
    pub(super) fn start(
        &self,
        mut io: TcpStream,
        peer: SocketAddr,
        queue: &tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>,
    ) {
        let ip = attitude_service::address::canonical_ip(peer.ip());
        if !self.sources.iter().any(|n| n.contains(&ip)) {
            self.results[2].increment(1);
            tracing::debug!(%peer, "PROXY header from an untrusted peer: closed");
            return;
        }
        let this = self.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            match proxy::read_header(&mut io, this.timeout).await {
                Ok(source) => {
                    this.results[usize::from(source.is_none())].increment(1);
                    let _ = queue.send((io, source.unwrap_or(peer))).await;
                }
                Err(error) => {
                    let timeout = matches!(error, proxy::ProxyError::Timeout(_));
                    this.results[if timeout { 4 } else { 3 }].increment(1);
                    tracing::info!(%peer, %error, "PROXY header refused");
                }
            }
        });
    }
}
