//! The key most limits count by: a client's network.

use std::net::IpAddr;
use std::sync::Arc;

use attitude_service::address::canonical_ip;
use ipnet::IpNet;

/// Reduces client addresses to the configured network prefix (IPv4 /32 and IPv6 /64 by
/// default), except for exempt networks.
#[derive(Debug, Clone)]
pub(crate) struct ClientKey {
    v4: u8,
    v6: u8,
    exempt: Arc<[IpNet]>,
}

impl ClientKey {
    /// Prefix lengths and exempt networks.
    pub(crate) fn new(v4: u8, v6: u8, exempt: &[IpNet]) -> Self {
        Self {
            v4,
            v6,
            exempt: exempt.into(),
        }
    }

    /// The client's network, or `None` when it is exempt.
    pub(crate) fn key(&self, ip: IpAddr) -> Option<IpAddr> {
        let ip = canonical_ip(ip);
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        let bits = if ip.is_ipv4() { self.v4 } else { self.v6 };
        IpNet::new(ip, bits).ok().map(|net| net.trunc().addr())
    }
}

#[cfg(test)]
mod tests {
    use attitude_service::address::domain_of;

    use super::*;

    #[test]
    fn prefixes_and_exemptions() {
        let keys = ClientKey::new(24, 64, &["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            keys.key("192.0.2.77".parse().unwrap()),
            Some("192.0.2.0".parse().unwrap())
        );
        assert_eq!(
            keys.key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            Some("2001:db8:1:2::".parse().unwrap())
        );
        assert_eq!(
            keys.key("::ffff:192.0.2.9".parse().unwrap()),
            Some("192.0.2.0".parse().unwrap())
        );
        assert_eq!(keys.key("10.1.2.3".parse().unwrap()), None);
        assert_eq!(domain_of("A@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of(""), None);
    }
}
