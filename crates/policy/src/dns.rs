//! The DNS resolver attitude's own lookups use (DNSBL, SPF): `[dns]` nameservers, or the
//! system's.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

/// No resolver could be made.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// /etc/resolv.conf does not say.
    #[error("cannot read the system's DNS configuration: {0}; set [dns] nameservers")]
    System(#[source] hickory_resolver::net::NetError),
    /// The settings do not make a resolver.
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] hickory_resolver::net::NetError),
}

/// A resolver asking `nameservers` (`None`: the ones in /etc/resolv.conf), one attempt of at
/// most `timeout` per query; an error says what to fix.
pub fn resolver(
    nameservers: Option<&[SocketAddr]>,
    timeout: Duration,
) -> Result<TokioResolver, ResolverError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match nameservers {
        Some(servers) => {
            let servers = servers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut ns.connections {
                        connection.port = addr.port();
                    }
                    ns
                })
                .collect();
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        }
        None => Resolver::builder(provider).map_err(ResolverError::System)?,
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 1;
    builder.build().map_err(ResolverError::Build)
}
