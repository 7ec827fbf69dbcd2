//! DNS discovery: a name's A/AAAA or SRV records, re-resolved on an interval, as one discovery
//! source of the registry (a Kubernetes headless Service).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio_util::sync::CancellationToken;

use crate::backend::BackendSpec;
use crate::identity::IdentityMode;
use crate::registry::Registry;

/// At most this many backends from one DNS name (an answer is trusted no further).
pub(crate) const MAX_DISCOVERED: usize = 256;

/// A DNS name whose addresses are backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSource {
    /// The name: A/AAAA records, or SRV records (`_smtp._tcp.mail.example`).
    pub name: String,
    /// Port for A/AAAA addresses (SRV records carry their own).
    pub port: u16,
    /// Look up SRV records instead of A/AAAA.
    pub srv: bool,
    /// Time between lookups.
    pub interval: Duration,
    /// Weight for A/AAAA addresses (SRV records carry their own).
    pub weight: u32,
    /// How these backends learn the real client.
    pub identity: IdentityMode,
}

/// Resolves `source` now and then every `interval`, replacing its backends in `registry` each
/// time, until `stop`. A failed lookup keeps the last answer (a DNS hiccup must not empty the
/// pool); an answer with no records empties it (a headless Service with no ready pods).
pub(crate) fn spawn(
    registry: Arc<Registry>,
    stop: CancellationToken,
    resolver: TokioResolver,
    source: DnsSource,
) {
    let errors =
        metrics::counter!("attitude_backend_discovery_errors_total", "name" => source.name.clone());
    tokio::spawn(async move {
        loop {
            match resolve(&resolver, &source).await {
                Ok(mut specs) => {
                    if specs.len() > MAX_DISCOVERED {
                        tracing::warn!(name = %source.name, found = specs.len(), kept = MAX_DISCOVERED, "backend discovery: too many addresses; keeping the first");
                        specs.truncate(MAX_DISCOVERED);
                    }
                    registry.set_source(&format!("dns:{}", source.name), specs)
                }
                Err(error) => {
                    errors.increment(1);
                    tracing::warn!(name = %source.name, %error, "backend discovery lookup failed; keeping the last answer");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(source.interval) => {}
            }
        }
    });
}

async fn resolve(
    resolver: &TokioResolver,
    source: &DnsSource,
) -> Result<Vec<BackendSpec>, hickory_resolver::net::NetError> {
    let empty = |e: &hickory_resolver::net::NetError| e.is_no_records_found() || e.is_nx_domain();
    if !source.srv {
        return match resolver.lookup_ip(source.name.as_str()).await {
            Ok(ips) => Ok(ips
                .iter()
                .map(|ip| BackendSpec {
                    addr: SocketAddr::new(ip, source.port),
                    weight: source.weight.max(1),
                    identity: source.identity,
                })
                .collect()),
            Err(e) if empty(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
    }
    let records = match resolver.lookup(source.name.as_str(), RecordType::SRV).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Err(e) if empty(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    // Only the best (lowest) priority: the others are for when those are unreachable, and
    // health checks already steer around a dead one.
    let Some(best) = records.iter().map(|s| s.priority).min() else {
        return Ok(Vec::new());
    };
    let mut specs = Vec::new();
    for srv in records.iter().filter(|s| s.priority == best) {
        match resolver.lookup_ip(srv.target.clone()).await {
            Ok(ips) => specs.extend(ips.iter().map(|ip| BackendSpec {
                addr: SocketAddr::new(ip, srv.port),
                weight: u32::from(srv.weight).max(1),
                identity: source.identity,
            })),
            Err(e) if empty(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(specs)
}
