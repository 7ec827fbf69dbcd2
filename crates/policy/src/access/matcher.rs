//! What an access rule's values match: networks for the client; for HELO names and addresses,
//! exact values, domains, subdomain suffixes and regular expressions.

use std::net::IpAddr;

use attitude_service::address::{canonical_ip, normalize_address, normalize_domain};
use ipnet::IpNet;
use regex::Regex;

/// One value of a name or address rule.
#[derive(Debug, Clone)]
enum Pattern {
    /// `user@example.com` (addresses) or `mx.example.com` (HELO): the whole value.
    Exact(String),
    /// `@example.com` or, for addresses, `example.com`: the domain.
    Domain(String),
    /// `.example.com`: every subdomain of example.com (not example.com itself).
    Suffix(String),
    /// `/regex/`: case-insensitive, over the whole value.
    Regex(Regex),
    /// `<>`: the null sender.
    Null,
}

/// A rule value that is not what its field takes.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// A client rule's value is no address or network.
    #[error("{0:?} is not an address or a network (CIDR)")]
    NotNetwork(String),
    /// A `/regex/` that does not compile.
    #[error("{value:?} is not a valid regular expression: {source}")]
    Regex {
        /// The value as written.
        value: String,
        /// Cause.
        source: regex::Error,
    },
    /// Empty, or with spaces.
    #[error("{0:?}: write a name, an address or /regex/")]
    NotAPattern(String),
}

/// The values of one rule, matched against one kind of field.
#[derive(Debug, Clone)]
pub struct Matcher(Kind);

#[derive(Debug, Clone)]
enum Kind {
    /// Client networks (a bare address is a /32 or /128).
    Networks(Vec<IpNet>),
    /// HELO names.
    Names(Vec<Pattern>),
    /// Sender or recipient addresses.
    Addresses(Vec<Pattern>),
}

impl Matcher {
    /// Client networks from `values` (`192.0.2.0/24`, `2001:db8::/32`, `192.0.2.7`).
    pub fn networks<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, MatcherError> {
        values
            .into_iter()
            .map(|v| {
                v.parse::<IpNet>()
                    .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| MatcherError::NotNetwork(v.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(|n| Matcher(Kind::Networks(n)))
    }

    /// HELO names: `mx.example.com` (exact), `.example.com` (subdomains), `/regex/`.
    pub fn names<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, MatcherError> {
        values
            .into_iter()
            .map(|v| parse(v, false))
            .collect::<Result<_, _>>()
            .map(|p| Matcher(Kind::Names(p)))
    }

    /// Addresses: `user@example.com` (exact), `example.com` or `@example.com` (the domain),
    /// `.example.com` (subdomains), `/regex/`, `<>` (the null sender).
    pub fn addresses<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, MatcherError> {
        values
            .into_iter()
            .map(|v| parse(v, true))
            .collect::<Result<_, _>>()
            .map(|p| Matcher(Kind::Addresses(p)))
    }

    /// True when the client address matches.
    pub fn client(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        matches!(&self.0, Kind::Networks(nets) if nets.iter().any(|n| n.contains(&ip)))
    }

    /// True when a HELO name or an address matches.
    pub fn value(&self, value: &str) -> bool {
        self.normalized(&normalize(value))
    }

    /// [`Matcher::value`] for a value [`normalize`]d once for every rule.
    pub fn normalized(&self, value: &str) -> bool {
        let (patterns, address) = match &self.0 {
            Kind::Names(p) => (p, false),
            Kind::Addresses(p) => (p, true),
            Kind::Networks(_) => return false,
        };
        let domain = if address {
            value.rsplit_once('@').map(|(_, d)| d)
        } else {
            Some(value)
        };
        patterns.iter().any(|p| match p {
            Pattern::Exact(v) => v == value,
            Pattern::Domain(d) => domain == Some(d.as_str()),
            Pattern::Suffix(s) => domain.is_some_and(|d| d.ends_with(s.as_str())),
            Pattern::Regex(r) => r.is_match(value),
            Pattern::Null => value.is_empty(),
        })
    }
}

/// A HELO name or an address as rules compare it: lower case, without a trailing dot, an
/// internationalised domain in A-label form (so `bücher.example` and `xn--bcher-kva.example`
/// match the same rules).
pub(super) fn normalize(value: &str) -> String {
    if value.contains('@') {
        normalize_address(value.trim_end_matches('.'))
    } else {
        normalize_domain(value)
    }
}

fn parse(value: &str, address: bool) -> Result<Pattern, MatcherError> {
    let v = value.trim();
    let pattern = if v.len() >= 2 && v.starts_with('/') && v.ends_with('/') {
        let body = &v[1..v.len() - 1];
        Pattern::Regex(Regex::new(&format!("(?i){body}")).map_err(|source| {
            MatcherError::Regex {
                value: v.to_owned(),
                source,
            }
        })?)
    } else if v == "<>" && address {
        Pattern::Null
    } else if v.is_empty() || v.contains(char::is_whitespace) {
        return Err(MatcherError::NotAPattern(value.to_owned()));
    } else if let Some(suffix) = v.strip_prefix('.') {
        Pattern::Suffix(format!(".{}", normalize_domain(suffix)))
    } else if let Some(domain) = v.strip_prefix('@') {
        Pattern::Domain(normalize_domain(domain))
    } else if address && !v.contains('@') {
        Pattern::Domain(normalize_domain(v))
    } else {
        Pattern::Exact(normalize(v))
    };
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let m = Matcher::networks(["192.0.2.0/24", "2001:db8::1"]).unwrap();
        assert!(m.client("192.0.2.9".parse().unwrap()));
        assert!(m.client("::ffff:192.0.2.9".parse().unwrap()));
        assert!(m.client("2001:db8::1".parse().unwrap()));
        assert!(!m.client("2001:db8::2".parse().unwrap()));
        assert!(Matcher::networks(["example.com"]).is_err());
    }

    #[test]
    fn addresses() {
        let m = Matcher::addresses([
            "Boss@Example.com",
            "spam.example",
            "@other.example",
            ".bulk.example",
            "/^newsletter-[0-9]+@/",
            "<>",
        ])
        .unwrap();
        for hit in [
            "boss@EXAMPLE.com",
            "anyone@spam.example",
            "x@other.example.",
            "x@a.bulk.example",
            "newsletter-42@anywhere.example",
            "",
        ] {
            assert!(m.value(hit), "{hit}");
        }
        for miss in [
            "other@example.com",
            "x@notspam.example",
            "x@bulk.example",
            "newsletter-x@anywhere.example",
        ] {
            assert!(!m.value(miss), "{miss}");
        }
        assert!(Matcher::addresses(["/([/"]).is_err());
    }

    #[test]
    fn names() {
        let m = Matcher::names(["localhost", ".dynamic.example", "/^[0-9.]+$/"]).unwrap();
        assert!(m.value("LOCALHOST"));
        assert!(m.value("host-1.dynamic.example"));
        assert!(m.value("192.0.2.1"));
        assert!(!m.value("mx.example.org"));
        assert!(!m.value("dynamic.example"));
    }
}
