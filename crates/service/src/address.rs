//! Small helpers on addresses that several policies need the same way.

use std::net::IpAddr;

/// The domain of a mail address, lower case, without a trailing dot (`None` for `<>`, an
/// address without a domain, or an empty one).
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

/// A client address as policies compare it: an IPv4 client seen through a dual-stack socket
/// (`::ffff:192.0.2.1`) is the IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_addresses() {
        assert_eq!(domain_of("A@Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(domain_of("postmaster"), None);
        assert_eq!(domain_of("a@"), None);
        assert_eq!(
            canonical_ip("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical_ip("2001:db8::1".parse().unwrap()),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}
