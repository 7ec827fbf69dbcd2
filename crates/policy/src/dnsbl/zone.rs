//! DNSBL/DNSWL zones as postscreen writes them: `zone`, `zone=127.0.0.2`, `zone*3`,
//! `zone=127.0.0.[2..11]*3`, `list.dnswl.org=127.0.[0..255].[1;2;3]*-5`.

use std::net::{IpAddr, Ipv4Addr};

/// One list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The zone queried (`zen.spamhaus.org`).
    pub name: String,
    /// Which answers count (`None`: any).
    pub filter: Option<[Vec<(u8, u8)>; 4]>,
    /// Added to the score when listed (negative for allowlists).
    pub weight: i32,
}

/// A DNSBL zone that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("DNSBL zone {zone:?}: {problem} (write e.g. \"zen.spamhaus.org=127.0.0.[2..11]*3\")")]
pub struct ZoneError {
    /// The zone as written.
    pub zone: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl Zone {
    /// Parses `zone[=filter][*weight]`.
    pub fn parse(text: &str) -> Result<Zone, ZoneError> {
        let bad = |problem: &'static str| ZoneError {
            zone: text.to_owned(),
            problem,
        };
        let (rest, weight) = match text.rsplit_once('*') {
            Some((rest, w)) => (
                rest,
                w.trim()
                    .parse::<i32>()
                    .map_err(|_| bad("the weight is not a whole number"))?,
            ),
            None => (text, 1),
        };
        let (name, filter) = match rest.split_once('=') {
            Some((name, filter)) => (
                name,
                Some(parse_filter(filter.trim()).ok_or_else(|| bad("bad answer filter"))?),
            ),
            None => (rest, None),
        };
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || !name.contains('.') || name.contains(char::is_whitespace) {
            return Err(bad("the zone must be a domain name"));
        }
        Ok(Zone {
            name,
            filter,
            weight,
        })
    }

    /// The query name for `ip` in this zone (reversed octets or nibbles, then the zone).
    pub fn query(&self, ip: IpAddr) -> String {
        let reversed = match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                format!("{d}.{c}.{b}.{a}")
            }
            IpAddr::V6(v6) => v6
                .octets()
                .iter()
                .rev()
                .flat_map(|byte| [byte & 0x0f, byte >> 4])
                .map(|nibble| format!("{nibble:x}"))
                .collect::<Vec<_>>()
                .join("."),
        };
        format!("{reversed}.{}.", self.name)
    }

    /// True when `answer` counts as a listing.
    pub fn counts(&self, answer: Ipv4Addr) -> bool {
        match &self.filter {
            None => true,
            Some(octets) => answer
                .octets()
                .iter()
                .zip(octets)
                .all(|(o, ranges)| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&o))),
        }
    }
}

fn parse_filter(text: &str) -> Option<[Vec<(u8, u8)>; 4]> {
    // Octets are separated by dots outside brackets (`[2..11]` has dots of its own).
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    if parts.len() != 4 {
        return None;
    }
    let mut out: [Vec<(u8, u8)>; 4] = Default::default();
    for (slot, part) in out.iter_mut().zip(parts) {
        let items = match part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            Some(inner) => inner.split(';').collect(),
            None => vec![part],
        };
        for item in items {
            let range = match item.split_once("..") {
                Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
                None => {
                    let n = item.trim().parse().ok()?;
                    (n, n)
                }
            };
            if range.0 > range.1 {
                return None;
            }
            slot.push(range);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let z = Zone::parse("zen.spamhaus.org=127.0.0.[2..11]*3").unwrap();
        assert_eq!((z.name.as_str(), z.weight), ("zen.spamhaus.org", 3));
        assert!(z.counts(Ipv4Addr::new(127, 0, 0, 4)));
        assert!(!z.counts(Ipv4Addr::new(127, 0, 0, 1)));
        let w = Zone::parse("list.dnswl.org=127.0.[0..255].[1;2;3]*-5").unwrap();
        assert_eq!(w.weight, -5);
        assert!(w.counts(Ipv4Addr::new(127, 0, 9, 2)));
        assert!(!w.counts(Ipv4Addr::new(127, 0, 9, 0)));
        let any = Zone::parse("bl.example.").unwrap();
        assert_eq!((any.weight, any.filter.is_none()), (1, true));
        assert_eq!(
            any.query("192.0.2.1".parse().unwrap()),
            "1.2.0.192.bl.example."
        );
        assert_eq!(
            any.query("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
        for bad in [
            "",
            "nodots",
            "bl.example*x",
            "bl.example=127.0.0",
            "bl.example=1.2.3.[9..2]",
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
    }
}
