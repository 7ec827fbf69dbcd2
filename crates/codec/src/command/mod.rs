//! SMTP commands: parsing one command line (grammar by `smtp-proto`) and encoding it back.

use std::fmt::Write as _;
use std::num::NonZeroU64;

use bytes::{BufMut, BytesMut};
use smtp_proto::Request;

use crate::ext::{Extension, Extensions};

mod error;
mod params;

pub use error::CommandError;
pub use params::Param;
use params::Verb;

/// `BODY=` parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030: BDAT only).
    BinaryMime,
}

impl Body {
    fn keyword(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// `MAIL FROM:<reverse-path>` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub address: String,
    /// `SIZE=` (RFC 1870), the client's estimate of the message size (`SIZE=0` is no estimate).
    pub size: Option<NonZeroU64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// The other parameters (DSN's RET and ENVID, AUTH, REQUIRETLS, MT-PRIORITY, ...), checked
    /// and kept as sent.
    pub params: Vec<Param>,
}

impl MailFrom {
    /// The extensions a backend must offer to take this transaction.
    pub fn needs(&self) -> Extensions {
        let mut needs = params::needs(&self.params);
        if self.smtputf8 {
            needs.insert(Extension::SmtpUtf8);
        }
        match self.body {
            Some(Body::EightBitMime) => needs.insert(Extension::EightBitMime),
            Some(Body::BinaryMime) => {
                needs.insert(Extension::BinaryMime);
                needs.insert(Extension::Chunking);
            }
            Some(Body::SevenBit) | None => {}
        }
        needs
    }

    /// The parameter `keyword` (upper case), if given.
    pub fn param(&self, keyword: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.keyword == keyword)
    }
}

/// `RCPT TO:<forward-path>` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptTo {
    /// The forward path without angle brackets.
    pub address: String,
    /// DSN's NOTIFY and ORCPT, RRVS: checked and kept as sent.
    pub params: Vec<Param>,
}

impl RcptTo {
    /// A recipient without parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            params: Vec::new(),
        }
    }

    /// The extensions a backend must offer to take this recipient.
    pub fn needs(&self) -> Extensions {
        params::needs(&self.params)
    }
}

/// A decoded SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`
    Helo(String),
    /// `EHLO domain`
    Ehlo(String),
    /// `MAIL FROM:<...>`
    Mail(MailFrom),
    /// `RCPT TO:<...>`
    Rcpt(RcptTo),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (CHUNKING, RFC 3030): the codec reads the chunk that follows.
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// `LAST` given.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY string`
    Vrfy(String),
    /// `EXPN string`
    Expn(String),
    /// `HELP [string]`
    Help,
    /// `STARTTLS`
    StartTls,
    /// `AUTH mechanism [initial-response]`
    Auth {
        /// Mechanism name, upper case (`PLAIN`, `LOGIN`, ...).
        mechanism: String,
        /// Initial response (base64 or `=`), if given.
        initial: Option<String>,
    },
    /// A verb attitude recognises but does not implement (ETRN, ATRN, BURL, LHLO).
    Unsupported(&'static str),
}

impl Command {
    /// The verb, upper case: a bounded label for metrics and logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Unsupported(verb) => verb,
        }
    }

    /// Encodes the command as one wire line ending in CRLF.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut line = String::with_capacity(64);
        match self {
            Command::Helo(host) => {
                let _ = write!(line, "HELO {host}");
            }
            Command::Ehlo(host) => {
                let _ = write!(line, "EHLO {host}");
            }
            Command::Mail(mail) => {
                line.push_str("MAIL FROM:");
                write_path(&mut line, &mail.address);
                if let Some(size) = mail.size {
                    let _ = write!(line, " SIZE={size}");
                }
                if let Some(body) = mail.body {
                    let _ = write!(line, " BODY={}", body.keyword());
                }
                if mail.smtputf8 {
                    line.push_str(" SMTPUTF8");
                }
                for param in &mail.params {
                    param.encode(&mut line);
                }
            }
            Command::Rcpt(rcpt) => {
                line.push_str("RCPT TO:");
                write_path(&mut line, &rcpt.address);
                for param in &rcpt.params {
                    param.encode(&mut line);
                }
            }
            Command::Data => line.push_str("DATA"),
            Command::Bdat { size, last } => {
                let _ = write!(line, "BDAT {size}{}", if *last { " LAST" } else { "" });
            }
            Command::Rset => line.push_str("RSET"),
            Command::Noop => line.push_str("NOOP"),
            Command::Quit => line.push_str("QUIT"),
            Command::Vrfy(s) => {
                let _ = write!(line, "VRFY {s}");
            }
            Command::Expn(s) => {
                let _ = write!(line, "EXPN {s}");
            }
            Command::Help => line.push_str("HELP"),
            Command::StartTls => line.push_str("STARTTLS"),
            Command::Auth { mechanism, initial } => {
                let _ = write!(line, "AUTH {mechanism}");
                if let Some(initial) = initial {
                    let _ = write!(line, " {initial}");
                }
            }
            Command::Unsupported(verb) => line.push_str(verb),
        }
        // Nothing decoded by this crate contains CR or LF, but a Command can be built by hand:
        // never let one become two lines on the wire.
        line.retain(|c| c != '\r' && c != '\n' && c != '\0');
        dst.reserve(line.len() + 2);
        dst.put_slice(line.as_bytes());
        dst.put_slice(b"\r\n");
    }

    /// Parses one command line (with or without its line ending).
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = strip_line_ending(line);
        if line.contains(&0) {
            return Err(CommandError::Nul);
        }
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let verb = &line[..verb_end];
        if verb.is_empty() {
            return Err(CommandError::Empty);
        }
        if !verb.iter().all(u8::is_ascii_alphanumeric) {
            return Err(CommandError::BadVerb);
        }
        if line.contains(&b'\r') {
            return Err(CommandError::BareCr);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Err(CommandError::InvalidUtf8);
        };
        if verb.eq_ignore_ascii_case(b"AUTH") {
            return parse_auth(text);
        }
        // MAIL and RCPT: smtp-proto reads the path, the parameters are read here (kept as
        // sent).
        let (head, rest) =
            if verb.eq_ignore_ascii_case(b"MAIL") || verb.eq_ignore_ascii_case(b"RCPT") {
                split_path(text)
            } else {
                (text, "")
            };
        // The parser hands over quoted local parts unquoted: remember whether there were any.
        let quoted = head.contains('"');
        // smtp-proto's parser wants the line ending.
        let mut owned = Vec::with_capacity(head.len() + 2);
        owned.extend_from_slice(head.as_bytes());
        owned.extend_from_slice(b"\r\n");
        let request = Request::parse(&mut owned.iter())
            .map_err(|e| CommandError::from_proto(e, verb))?
            .into_owned();
        Ok(match request {
            Request::Ehlo { host } => Command::Ehlo(host),
            Request::Helo { host } => Command::Helo(host),
            Request::Lhlo { .. } => Command::Unsupported("LHLO"),
            Request::Mail { mut from } => {
                // smtp-proto hands over a domain-less path (`<postmaster>`) as empty, like the
                // null sender: keep what the client wrote (the backend decides, as it would if
                // the client spoke to it), never invent a `<>`.
                if from.address.is_empty() {
                    from.address = path_of(text).to_owned();
                }
                Command::Mail(mail_from(
                    from.address,
                    params::parse(rest, Verb::Mail)?,
                    quoted,
                )?)
            }
            Request::Rcpt { to } => {
                let params = params::parse(rest, Verb::Rcpt)?;
                // smtp-proto hands over a domain-less path as empty; RFC 5321 §4.5.1 allows
                // exactly <postmaster> (any case), and an empty forward path is never valid.
                let address = if to.address.is_empty() {
                    let path = path_of(text);
                    if !path.eq_ignore_ascii_case("postmaster") {
                        return Err(CommandError::BadAddress);
                    }
                    path.to_owned()
                } else {
                    to.address
                };
                // Whether non-ASCII is allowed depends on the transaction's MAIL (SMTPUTF8):
                // the session checks that.
                check_address(&address, true, quoted)?;
                Command::Rcpt(RcptTo { address, params })
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => Command::Bdat {
                size: chunk_size as u64,
                last: is_last,
            },
            Request::Auth { .. } => unreachable!("AUTH is parsed above"),
            Request::Noop { .. } => Command::Noop,
            Request::Vrfy { value } => Command::Vrfy(value),
            Request::Expn { value } => Command::Expn(value),
            Request::Help { .. } => Command::Help,
            Request::Etrn { .. } => Command::Unsupported("ETRN"),
            Request::Atrn { .. } => Command::Unsupported("ATRN"),
            Request::Burl { .. } => Command::Unsupported("BURL"),
            Request::StartTls => Command::StartTls,
            Request::Data => Command::Data,
            Request::Rset => Command::Rset,
            Request::Quit => Command::Quit,
        })
    }
}

/// Writes `<address>`, quoting the local part when it is not a dot-string (RFC 5321 §4.1.2):
/// the parser hands over quoted local parts unquoted, and `"a@b"@c.example` must not reach a
/// backend as `a@b@c.example`.
fn write_path(line: &mut String, address: &str) {
    line.push('<');
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (address, None),
    };
    if address.is_empty() || is_dot_string(local) {
        line.push_str(local);
    } else {
        line.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                line.push('\\');
            }
            line.push(c);
        }
        line.push('"');
    }
    if let Some(domain) = domain {
        line.push('@');
        line.push_str(domain);
    }
    line.push('>');
}

/// `Dot-string = Atom *("." Atom)` with RFC 5322 atext (and UTF-8, RFC 6531).
fn is_dot_string(local: &str) -> bool {
    let atext =
        |c: char| c.is_ascii_alphanumeric() || !c.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// The text between the first `<` and the next `>`: the path as the client wrote it.
fn path_of(text: &str) -> &str {
    text.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map_or("", |(path, _)| path)
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `MAIL FROM:<path>` and the rest of the line: the path ends at the first `>` outside a
/// quoted string (a path without brackets at the first space).
fn split_path(text: &str) -> (&str, &str) {
    let Some(open) = text.find('<') else {
        let colon = text.find(':').map_or(0, |c| c + 1);
        let start = colon + text[colon..].len() - text[colon..].trim_start().len();
        let end = text[start..].find(' ').map_or(text.len(), |e| start + e);
        return text.split_at(end);
    };
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return text.split_at(open + i + 1),
            _ => {}
        }
    }
    (text, "")
}

fn mail_from(
    address: String,
    mut params: Vec<Param>,
    quoted: bool,
) -> Result<MailFrom, CommandError> {
    let mut take = |keyword: &str| {
        let at = params.iter().position(|p| p.keyword == keyword)?;
        Some(params.remove(at))
    };
    let size = take("SIZE")
        .and_then(|p| p.value)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| CommandError::InvalidParameter("SIZE".into()))
        })
        .transpose()?;
    let body = take("BODY")
        .and_then(|p| p.value)
        .map(|v| match v.to_ascii_uppercase().as_str() {
            "8BITMIME" => Body::EightBitMime,
            "BINARYMIME" => Body::BinaryMime,
            _ => Body::SevenBit,
        });
    let smtputf8 = take("SMTPUTF8").is_some();
    check_address(&address, smtputf8, quoted)?;
    if !smtputf8
        && params
            .iter()
            .any(|p| p.value.as_ref().is_some_and(|v| !v.is_ascii()))
    {
        return Err(CommandError::NeedsSmtpUtf8);
    }
    Ok(MailFrom {
        address,
        size: size.and_then(NonZeroU64::new),
        body,
        smtputf8,
        params,
    })
}

/// Addresses are relayed to a backend: no control characters, no angle brackets, a well-formed
/// domain, one `@` unless the local part was quoted; non-ASCII only with SMTPUTF8. (RCPT
/// addresses are checked against the transaction's SMTPUTF8 flag by the session, which knows
/// it.)
fn check_address(address: &str, allow_utf8: bool, quoted: bool) -> Result<(), CommandError> {
    if address.len() > 256 {
        return Err(CommandError::AddressTooLong);
    }
    if address
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
    {
        return Err(CommandError::BadAddress);
    }
    if !allow_utf8 && !address.is_ascii() {
        return Err(CommandError::NeedsSmtpUtf8);
    }
    if !quoted && address.matches('@').count() > 1 {
        return Err(CommandError::BadAddress);
    }
    if let Some((_, domain)) = address.rsplit_once('@')
        && !is_domain(domain)
    {
        return Err(CommandError::BadAddress);
    }
    Ok(())
}

/// A domain name (labels of letters, digits, hyphens or UTF-8) or an address literal `[...]`.
fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return !literal.is_empty() && !literal.contains(['[', ']', '\\', ' ']);
    }
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

fn parse_auth(text: &str) -> Result<Command, CommandError> {
    let mut parts = text.split(' ').filter(|p| !p.is_empty());
    parts.next(); // AUTH
    let mechanism = parts
        .next()
        .ok_or(CommandError::Syntax("AUTH mechanism [initial-response]"))?;
    if mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    let initial = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

#[cfg(test)]
mod tests;
