//! What a backend offers: its EHLO reply, read once per connection and kept per backend, so
//! that attitude offers clients only what every usable backend can take.

use attitude_codec::{Extension, Extensions, Reply};

use crate::identity::XclientAttrs;

/// What a backend offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCaps {
    /// The extensions it offered.
    pub extensions: Extensions,
    /// Its `SIZE` limit (`Some(0)`: SIZE without a limit; `None`: no SIZE).
    pub size_limit: Option<u64>,
    /// `XCLIENT ...`, with the attributes it accepts.
    pub xclient: Option<XclientAttrs>,
    /// `XFORWARD ...`, with the attributes it accepts.
    pub xforward: Option<XclientAttrs>,
    /// `AUTH ... PLAIN ...`
    pub auth_plain: bool,
    /// `AUTH ... LOGIN ...`
    pub auth_login: bool,
}

impl BackendCaps {
    /// Whether it offered `ext`.
    pub fn offers(&self, ext: Extension) -> bool {
        self.extensions.contains(ext)
    }

    /// The AUTH mechanisms attitude can relay that the backend offered.
    pub fn auth_mechanisms(&self) -> Vec<String> {
        [("PLAIN", self.auth_plain), ("LOGIN", self.auth_login)]
            .into_iter()
            .filter(|(_, offered)| *offered)
            .map(|(m, _)| m.to_string())
            .collect()
    }

    /// Reads an EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let (extensions, size_limit) = Extensions::from_ehlo(reply);
        let mut caps = Self {
            extensions,
            size_limit,
            ..Self::default()
        };
        for line in reply.lines().iter().skip(1) {
            let upper = line.to_ascii_uppercase();
            // "AUTH PLAIN LOGIN", or the old "AUTH=PLAIN LOGIN".
            if let Some(mechanisms) = upper
                .strip_prefix("AUTH")
                .filter(|r| r.starts_with([' ', '=']))
            {
                for m in mechanisms[1..].split(' ') {
                    match m {
                        "PLAIN" => caps.auth_plain = true,
                        "LOGIN" => caps.auth_login = true,
                        _ => {}
                    }
                }
            } else if let Some(attrs) = upper.strip_prefix("XCLIENT") {
                caps.xclient = Some(XclientAttrs::parse(attrs));
            } else if let Some(attrs) = upper.strip_prefix("XFORWARD") {
                caps.xforward = Some(XclientAttrs::parse(attrs));
            }
        }
        caps
    }
}

/// What attitude may offer clients on behalf of its backends: the extensions every usable
/// backend offered (attitude's own, PIPELINING, STARTTLS, AUTH, ENHANCEDSTATUSCODES, are not
/// its business) and the smallest SIZE limit among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offer {
    /// Extensions every usable backend offered (empty until one was seen).
    pub extensions: Extensions,
    /// The smallest SIZE limit a usable backend gave (`None`: none gave one).
    pub size_limit: Option<u64>,
}

impl Offer {
    /// The offer of a set of backends, each with what it offered (`None`: not seen yet, which
    /// offers nothing).
    pub fn of(caps: impl IntoIterator<Item = Option<BackendCaps>>) -> Self {
        let mut offer: Option<Offer> = None;
        for caps in caps {
            let (extensions, limit) = match caps {
                Some(c) => (c.extensions, c.size_limit.filter(|l| *l > 0)),
                None => (Extensions::EMPTY, None),
            };
            offer = Some(match offer {
                None => Offer {
                    extensions,
                    size_limit: limit,
                },
                Some(o) => Offer {
                    extensions: o.extensions.intersection(extensions),
                    size_limit: match (o.size_limit, limit) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                },
            });
        }
        offer.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(lines: &[&str]) -> BackendCaps {
        let reply = lines
            .iter()
            .fold(Reply::plain(250, "mx"), |r, l| r.with_line(l.to_string()));
        BackendCaps::from_ehlo(&reply)
    }

    #[test]
    fn an_offer_is_what_every_backend_offers() {
        let postfix = caps(&[
            "PIPELINING",
            "SIZE 10240000",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
        ]);
        let sink = caps(&["PIPELINING", "SIZE", "8BITMIME"]);
        assert!(postfix.offers(Extension::Dsn));
        let offer = Offer::of([Some(postfix), Some(sink)]);
        assert_eq!(offer.extensions.to_string(), "PIPELINING SIZE 8BITMIME");
        assert_eq!(offer.size_limit, Some(10_240_000));
        // A backend not seen yet offers nothing.
        assert_eq!(
            Offer::of([Some(postfix), None]).extensions,
            Extensions::EMPTY
        );
        assert_eq!(Offer::of([]), Offer::default());
        let x = caps(&[
            "XCLIENT NAME ADDR",
            "XFORWARD NAME ADDR PROTO HELO",
            "AUTH PLAIN LOGIN",
        ]);
        assert!(x.xclient.is_some() && x.xforward.is_some());
        assert_eq!(x.auth_mechanisms(), ["PLAIN", "LOGIN"]);
    }
}
