//! Small helpers on addresses that several policies need the same way.

use std::net::IpAddr;

/// The domain of a mail address as policies compare it ([`normalize_domain`]; `None` for
/// `<>`, an address without a domain, or an empty one).
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| normalize_domain(domain))
        .filter(|d| !d.is_empty())
}

/// A domain as policies compare it: without a trailing dot, lower case, and an
/// internationalised name in its A-label form (`bücher.example` is `xn--bcher-kva.example`,
/// UTS #46 by the `idna` crate), so that the U-label and A-label forms of one domain are one
/// key. An address literal (`[192.0.2.1]`) or a name IDNA refuses stays as it is, lower case.
pub fn normalize_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    if domain.starts_with('[') {
        return domain.to_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// An address as policies compare it: the local part lower case, the domain
/// [`normalize_domain`]d (`Jö@Bücher.example` and `jö@xn--bcher-kva.example` are one key).
pub fn normalize_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_lowercase(), normalize_domain(domain)),
        None => address.to_lowercase(),
    }
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
        assert_eq!(
            domain_of("a@Bücher.Example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            domain_of("a@XN--BCHER-KVA.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            normalize_address("Jö@Bücher.example"),
            normalize_address("jö@xn--bcher-kva.example.")
        );
        assert_eq!(domain_of("a@[192.0.2.1]").as_deref(), Some("[192.0.2.1]"));
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
