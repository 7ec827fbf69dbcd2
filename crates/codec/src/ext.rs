//! SMTP service extensions (the keywords of an EHLO reply) as a small set, so that what a
//! backend offers, what a client was offered and what a transaction needs can be compared.

use std::fmt;

use crate::reply::Reply;

/// An extension attitude offers itself or relays end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extension {
    /// `SIZE` (RFC 1870).
    Size,
    /// `PIPELINING` (RFC 2920).
    Pipelining,
    /// `8BITMIME` (RFC 6152).
    EightBitMime,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    EnhancedStatusCodes,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH` (RFC 4954).
    Auth,
    /// `SMTPUTF8` (RFC 6531).
    SmtpUtf8,
    /// `DSN` (RFC 3461).
    Dsn,
    /// `CHUNKING` (RFC 3030).
    Chunking,
    /// `BINARYMIME` (RFC 3030).
    BinaryMime,
    /// `REQUIRETLS` (RFC 8689).
    RequireTls,
    /// `MT-PRIORITY` (RFC 6710).
    MtPriority,
    /// `DELIVERBY` (RFC 2852).
    DeliverBy,
    /// `FUTURERELEASE` (RFC 4865).
    FutureRelease,
    /// `MTRK` (RFC 3885).
    Mtrk,
    /// `RRVS` (RFC 7293).
    Rrvs,
}

impl Extension {
    /// Every extension, in the order an EHLO reply lists them.
    pub const ALL: [Extension; 16] = [
        Extension::Pipelining,
        Extension::Size,
        Extension::EightBitMime,
        Extension::EnhancedStatusCodes,
        Extension::StartTls,
        Extension::Auth,
        Extension::SmtpUtf8,
        Extension::Dsn,
        Extension::Chunking,
        Extension::BinaryMime,
        Extension::RequireTls,
        Extension::MtPriority,
        Extension::DeliverBy,
        Extension::FutureRelease,
        Extension::Mtrk,
        Extension::Rrvs,
    ];

    /// The EHLO keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Extension::Size => "SIZE",
            Extension::Pipelining => "PIPELINING",
            Extension::EightBitMime => "8BITMIME",
            Extension::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Extension::StartTls => "STARTTLS",
            Extension::Auth => "AUTH",
            Extension::SmtpUtf8 => "SMTPUTF8",
            Extension::Dsn => "DSN",
            Extension::Chunking => "CHUNKING",
            Extension::BinaryMime => "BINARYMIME",
            Extension::RequireTls => "REQUIRETLS",
            Extension::MtPriority => "MT-PRIORITY",
            Extension::DeliverBy => "DELIVERBY",
            Extension::FutureRelease => "FUTURERELEASE",
            Extension::Mtrk => "MTRK",
            Extension::Rrvs => "RRVS",
        }
    }

    /// The extension an EHLO keyword names (any case).
    pub fn from_keyword(keyword: &str) -> Option<Extension> {
        Extension::ALL
            .into_iter()
            .find(|e| e.keyword().eq_ignore_ascii_case(keyword))
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of [`Extension`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Extensions(u32);

impl Extensions {
    /// No extension.
    pub const EMPTY: Extensions = Extensions(0);

    /// This set and `ext`.
    #[must_use]
    pub fn with(self, ext: Extension) -> Self {
        Self(self.0 | ext.bit())
    }

    /// This set without `ext`.
    #[must_use]
    pub fn without(self, ext: Extension) -> Self {
        Self(self.0 & !ext.bit())
    }

    /// Adds `ext`.
    pub fn insert(&mut self, ext: Extension) {
        self.0 |= ext.bit();
    }

    /// Whether `ext` is in the set.
    pub fn contains(self, ext: Extension) -> bool {
        self.0 & ext.bit() != 0
    }

    /// Whether every extension of `other` is in the set.
    pub fn contains_all(self, other: Extensions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Extensions in both sets.
    #[must_use]
    pub fn intersection(self, other: Extensions) -> Self {
        Self(self.0 & other.0)
    }

    /// Extensions in either set.
    #[must_use]
    pub fn union(self, other: Extensions) -> Self {
        Self(self.0 | other.0)
    }

    /// Extensions of `self` that `other` lacks.
    #[must_use]
    pub fn missing_from(self, other: Extensions) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The extensions in the set, in EHLO order.
    pub fn iter(self) -> impl Iterator<Item = Extension> {
        Extension::ALL
            .into_iter()
            .filter(move |e| self.contains(*e))
    }

    /// The extensions an EHLO reply offers, and its `SIZE` limit (`Some(0)`: SIZE without a
    /// limit, `None`: no SIZE line).
    pub fn from_ehlo(reply: &Reply) -> (Extensions, Option<u64>) {
        let mut set = Extensions::EMPTY;
        let mut size = None;
        for line in reply.lines().iter().skip(1) {
            // "AUTH PLAIN", or the old "AUTH=PLAIN".
            let mut words = line.split([' ', '=']);
            let Some(ext) = words.next().and_then(Extension::from_keyword) else {
                continue;
            };
            set.insert(ext);
            if ext == Extension::Size {
                size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
        (set, size)
    }
}

impl FromIterator<Extension> for Extensions {
    fn from_iter<I: IntoIterator<Item = Extension>>(iter: I) -> Self {
        iter.into_iter().fold(Extensions::EMPTY, Extensions::with)
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Extension::keyword))
            .finish()
    }
}

impl fmt::Display for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ext) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(ext.keyword())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_keywords() {
        let reply = Reply::plain(250, "mx.example")
            .with_line("PIPELINING")
            .with_line("SIZE 10240000")
            .with_line("8BITMIME")
            .with_line("auth=PLAIN LOGIN")
            .with_line("DSN")
            .with_line("SMTPUTF8")
            .with_line("CHUNKING")
            .with_line("X-UNKNOWN")
            .with_line("XCLIENT NAME ADDR");
        let (set, size) = Extensions::from_ehlo(&reply);
        assert_eq!(size, Some(10_240_000));
        assert_eq!(
            set.to_string(),
            "PIPELINING SIZE 8BITMIME AUTH SMTPUTF8 DSN CHUNKING"
        );
        assert!(set.contains_all([Extension::Dsn, Extension::Chunking].into_iter().collect()));
        assert!(!set.contains(Extension::BinaryMime));
        let (_, size) = Extensions::from_ehlo(&Reply::plain(250, "x").with_line("SIZE"));
        assert_eq!(size, Some(0));
    }
}
