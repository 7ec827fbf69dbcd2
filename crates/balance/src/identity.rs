//! Who the real client is, and how a backend learns it: XCLIENT or PROXY protocol v2.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};

/// How a backend learns the real client's identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum IdentityMode {
    /// Not at all: the backend sees attitude's address.
    #[default]
    None,
    /// `XCLIENT` before each transaction (only when the backend offers it). Connections are
    /// pooled: XCLIENT is sent again whenever a connection serves another client.
    Xclient,
    /// A PROXY protocol v2 header at connect. A connection then serves one client only.
    Proxy,
    /// `XFORWARD` before each transaction (Postfix's content-filter interface: the backend logs
    /// the real client but authorises attitude's address). Connections are pooled.
    Xforward,
}

/// The client as attitude saw it, for a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The client's address (after PROXY protocol in, the real one).
    pub addr: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The HELO/EHLO name the client gave.
    pub helo: Option<String>,
    /// EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// The authenticated user, if any.
    pub login: Option<String>,
}

/// The XCLIENT or XFORWARD attributes a backend said it accepts (`250-XCLIENT NAME ADDR PORT
/// ...`, `250-XFORWARD NAME ADDR PROTO HELO SOURCE ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XclientAttrs {
    /// Bit per attribute, in the order of [`ATTRIBUTES`].
    bits: u8,
}

const ATTRIBUTES: [&str; 8] = [
    "ADDR", "PORT", "NAME", "HELO", "PROTO", "LOGIN", "IDENT", "SOURCE",
];

impl XclientAttrs {
    /// Parses the words after `XCLIENT` in an EHLO line.
    pub fn parse(words: &str) -> Self {
        let mut bits = 0;
        for word in words.split_ascii_whitespace() {
            if let Some(i) = ATTRIBUTES.iter().position(|a| a.eq_ignore_ascii_case(word)) {
                bits |= 1 << i;
            }
        }
        Self { bits }
    }

    fn has(&self, attr: &str) -> bool {
        ATTRIBUTES
            .iter()
            .position(|a| *a == attr)
            .is_some_and(|i| self.bits & (1 << i) != 0)
    }
}

impl ClientIdentity {
    /// A hash that tells whether a pooled connection already carries this identity.
    pub fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// The XCLIENT command line (without CRLF) with the attributes the backend accepts, every
    /// value sanitised and xtext-encoded. NAME is always `[UNAVAILABLE]`: attitude does no
    /// verified reverse lookup, and an unverified PTR name must not reach a backend.
    pub fn xclient_line(&self, offered: XclientAttrs) -> String {
        let mut line = String::from("XCLIENT");
        let mut add = |attr: &str, value: &str| {
            if offered.has(attr) {
                line.push(' ');
                line.push_str(attr);
                line.push('=');
                xtext_into(value, &mut line);
            }
        };
        add("ADDR", &xclient_addr(self.addr));
        add("PORT", &self.addr.port().to_string());
        add("NAME", "[UNAVAILABLE]");
        add(
            "HELO",
            &self
                .helo
                .as_deref()
                .map(sanitize)
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "[UNAVAILABLE]".into()),
        );
        add("PROTO", if self.esmtp { "ESMTP" } else { "SMTP" });
        if let Some(login) = self
            .login
            .as_deref()
            .map(sanitize)
            .filter(|l| !l.is_empty())
        {
            add("LOGIN", &login);
        }
        line
    }

    /// The XFORWARD command lines (without CRLF) with the attributes the backend accepts, for
    /// the transaction `ident` (attitude's message id), each under 512 octets (Postfix's
    /// limit; attributes are spread over several lines when needed). Values are sanitised and
    /// xtext-encoded; NAME is `[UNAVAILABLE]` as for XCLIENT.
    pub fn xforward_lines(&self, offered: XclientAttrs, ident: &str) -> Vec<String> {
        let helo = self
            .helo
            .as_deref()
            .map(sanitize)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "[UNAVAILABLE]".into());
        let attributes = [
            ("NAME", "[UNAVAILABLE]".to_owned()),
            ("ADDR", xclient_addr(self.addr)),
            ("PORT", self.addr.port().to_string()),
            (
                "PROTO",
                if self.esmtp { "ESMTP" } else { "SMTP" }.to_owned(),
            ),
            ("HELO", helo),
            ("IDENT", sanitize(ident)),
            ("SOURCE", "REMOTE".to_owned()),
        ];
        let mut lines = Vec::new();
        let mut line = String::from("XFORWARD");
        for (attr, value) in attributes {
            if !offered.has(attr) {
                continue;
            }
            let mut item = format!(" {attr}=");
            // At most 450 octets encoded (a HELO of `+`s triples in xtext): under 512 alone.
            let mut fits = value.as_str();
            while xtext_len(fits) > 450 {
                let mut cut = fits.len() - 1;
                while !fits.is_char_boundary(cut) {
                    cut -= 1;
                }
                fits = &fits[..cut];
            }
            xtext_into(fits, &mut item);
            if line.len() + item.len() > 500 && line.len() > "XFORWARD".len() {
                lines.push(std::mem::replace(&mut line, String::from("XFORWARD")));
            }
            line.push_str(&item);
        }
        if line.len() > "XFORWARD".len() {
            lines.push(line);
        }
        lines
    }

    /// A PROXY protocol v2 header (PROXY command, TCP) with the client and local addresses.
    pub fn proxy_header(&self) -> Vec<u8> {
        let (src, dst) = match (self.addr, self.local) {
            // Both ends in one family: v4-mapped v6 becomes v4 where the other end is v4.
            (SocketAddr::V6(s), SocketAddr::V4(d)) => match s.ip().to_ipv4_mapped() {
                Some(v4) => (SocketAddr::new(v4.into(), s.port()), SocketAddr::V4(d)),
                None => (
                    self.addr,
                    SocketAddr::new(d.ip().to_ipv6_mapped().into(), d.port()),
                ),
            },
            (SocketAddr::V4(s), SocketAddr::V6(d)) => match d.ip().to_ipv4_mapped() {
                Some(v4) => (SocketAddr::V4(s), SocketAddr::new(v4.into(), d.port())),
                None => (
                    SocketAddr::new(s.ip().to_ipv6_mapped().into(), s.port()),
                    self.local,
                ),
            },
            pair => pair,
        };
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .build()
            .expect("a v2 header with two addresses always builds")
    }
}

/// An address as XCLIENT and XFORWARD give it: IPv4 as it is (a v4-mapped IPv6 too), IPv6
/// with the `IPV6:` prefix.
fn xclient_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPV6:{}", a.ip()),
        },
    }
}

/// A PROXY v2 LOCAL header: what a health check sends to a backend that expects PROXY.
pub fn proxy_local_header() -> Vec<u8> {
    Builder::new(Version::Two | Command::Local, 0)
        .build()
        .expect("an empty v2 header always builds")
}

/// Printable ASCII only (no spaces, no controls, nothing else), at most 255 characters: what a
/// client typed never reaches a backend's logs raw.
fn sanitize(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

/// The length of `value` in xtext.
fn xtext_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| {
            if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
                1
            } else {
                3
            }
        })
        .sum()
}

/// RFC 3461 xtext: `+`, `=` and anything outside `!`..`~` as `+HH`.
fn xtext_into(value: &str, out: &mut String) {
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ClientIdentity {
        ClientIdentity {
            addr: "192.0.2.7:40123".parse().unwrap(),
            local: "198.51.100.1:25".parse().unwrap(),
            helo: Some("mx.example\r\nXCLIENT ADDR=1.2.3.4 a+b=c".into()),
            esmtp: true,
            login: Some("user@example.org".into()),
        }
    }

    #[test]
    fn xclient_sends_only_offered_attributes_sanitised_and_encoded() {
        let all = XclientAttrs::parse("NAME ADDR PORT PROTO HELO LOGIN DESTADDR");
        let line = identity().xclient_line(all);
        assert_eq!(
            line,
            "XCLIENT ADDR=192.0.2.7 PORT=40123 NAME=[UNAVAILABLE] \
             HELO=mx.exampleXCLIENTADDR+3D1.2.3.4a+2Bb+3Dc PROTO=ESMTP LOGIN=user@example.org"
        );
        assert!(!line.contains('\r') && !line.contains('\n'));
        let some = XclientAttrs::parse("addr helo");
        assert_eq!(
            identity().xclient_line(some),
            "XCLIENT ADDR=192.0.2.7 HELO=mx.exampleXCLIENTADDR+3D1.2.3.4a+2Bb+3Dc"
        );
    }

    #[test]
    fn xclient_ipv6_and_missing_helo() {
        let id = ClientIdentity {
            addr: "[2001:db8::7]:2525".parse().unwrap(),
            helo: None,
            esmtp: false,
            login: None,
            ..identity()
        };
        let line = id.xclient_line(XclientAttrs::parse("ADDR HELO PROTO LOGIN"));
        assert_eq!(
            line,
            "XCLIENT ADDR=IPV6:2001:db8::7 HELO=[UNAVAILABLE] PROTO=SMTP"
        );
    }

    #[test]
    fn proxy_header_round_trips_through_ppp() {
        let header = identity().proxy_header();
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address.to_string(), "192.0.2.7");
                assert_eq!(a.source_port, 40123);
                assert_eq!(a.destination_port, 25);
            }
            other => panic!("{other:?}"),
        }
        let local = proxy_local_header();
        let parsed = ppp::v2::Header::try_from(&local[..]).unwrap();
        assert_eq!(parsed.command, Command::Local);
    }

    #[test]
    fn xforward_lines_carry_what_the_backend_accepts() {
        let id = identity();
        let lines = id.xforward_lines(
            XclientAttrs::parse("NAME ADDR PORT PROTO HELO IDENT SOURCE"),
            "17.1",
        );
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40123 PROTO=ESMTP HELO=mx.exampleXCLIENTADDR+3D1.2.3.4a+2Bb+3Dc IDENT=17.1 SOURCE=REMOTE"),
            "{lines:?}"
        );
        assert_eq!(
            id.xforward_lines(XclientAttrs::parse("ADDR"), "1.1"),
            ["XFORWARD ADDR=192.0.2.7"]
        );
        // A long HELO: every line stays under Postfix's 512 octets.
        let long = ClientIdentity {
            helo: Some("+".repeat(300)),
            ..identity()
        };
        let lines = long.xforward_lines(
            XclientAttrs::parse("NAME ADDR PORT PROTO HELO IDENT SOURCE"),
            "1.1",
        );
        assert!(
            lines.len() > 1 && lines.iter().all(|l| l.len() < 512),
            "{lines:?}"
        );
    }
}
