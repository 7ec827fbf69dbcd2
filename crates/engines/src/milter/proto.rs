//! The milter protocol's packets (version 6, as Sendmail's libmilter and Postfix's milter8
//! speak it): a 4-octet big-endian length (tokio-util's `LengthDelimitedCodec` frames it), a
//! command octet, then its data. This file encodes what the MTA sends and parses what a milter
//! answers; nothing here does I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version attitude speaks.
pub const VERSION: u32 = 6;
/// Largest packet attitude reads from a milter (a replaced body comes in pieces of at most
/// 64 KiB).
pub const MAX_PACKET: usize = 1024 * 1024;
/// Largest body piece sent to a milter (libmilter's `MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65535;

/// Actions attitude lets a milter take (`SMFIF_*`).
pub mod action {
    /// Add headers.
    pub const ADD_HEADERS: u32 = 0x01;
    /// Replace the body.
    pub const CHANGE_BODY: u32 = 0x02;
    /// Add recipients.
    pub const ADD_RCPT: u32 = 0x04;
    /// Delete recipients.
    pub const DELETE_RCPT: u32 = 0x08;
    /// Change or delete headers.
    pub const CHANGE_HEADERS: u32 = 0x10;
    /// Quarantine the message.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the sender.
    pub const CHANGE_FROM: u32 = 0x40;
    /// Add recipients with ESMTP parameters.
    pub const ADD_RCPT_PARAMS: u32 = 0x80;
    /// Every action attitude understands.
    pub const ALL: u32 = ADD_HEADERS
        | CHANGE_BODY
        | ADD_RCPT
        | DELETE_RCPT
        | CHANGE_HEADERS
        | QUARANTINE
        | CHANGE_FROM
        | ADD_RCPT_PARAMS;
}

/// Protocol steps a milter may skip or not answer (`SMFIP_*`).
pub mod step {
    /// No connect information.
    pub const NO_CONNECT: u32 = 0x01;
    /// No HELO.
    pub const NO_HELO: u32 = 0x02;
    /// No MAIL.
    pub const NO_MAIL: u32 = 0x04;
    /// No RCPT.
    pub const NO_RCPT: u32 = 0x08;
    /// No body.
    pub const NO_BODY: u32 = 0x10;
    /// No headers.
    pub const NO_HEADERS: u32 = 0x20;
    /// No end of headers.
    pub const NO_EOH: u32 = 0x40;
    /// No reply to each header.
    pub const NR_HEADER: u32 = 0x80;
    /// No unknown commands.
    pub const NO_UNKNOWN: u32 = 0x100;
    /// No DATA.
    pub const NO_DATA: u32 = 0x200;
    /// The milter may answer a body piece with SKIP.
    pub const SKIP: u32 = 0x400;
    /// No reply to connect, HELO, MAIL, RCPT, DATA, unknown, end of headers, body.
    pub const NR_CONNECT: u32 = 0x1000;
    /// See [`NR_CONNECT`].
    pub const NR_HELO: u32 = 0x2000;
    /// See [`NR_CONNECT`].
    pub const NR_MAIL: u32 = 0x4000;
    /// See [`NR_CONNECT`].
    pub const NR_RCPT: u32 = 0x8000;
    /// See [`NR_CONNECT`].
    pub const NR_DATA: u32 = 0x10000;
    /// See [`NR_CONNECT`].
    pub const NR_UNKNOWN: u32 = 0x20000;
    /// See [`NR_CONNECT`].
    pub const NR_EOH: u32 = 0x40000;
    /// See [`NR_CONNECT`].
    pub const NR_BODY: u32 = 0x80000;
    /// Every step flag attitude honours (not `RCPT_REJ`, not `HDR_LEADSPC`: a milter asking
    /// for those is told no in the negotiation).
    pub const ALL: u32 = NO_CONNECT
        | NO_HELO
        | NO_MAIL
        | NO_RCPT
        | NO_BODY
        | NO_HEADERS
        | NO_EOH
        | NR_HEADER
        | NO_UNKNOWN
        | NO_DATA
        | SKIP
        | NR_CONNECT
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKNOWN
        | NR_EOH
        | NR_BODY;
}

/// A stage of the conversation, as the MTA's command octet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `C`
    Connect,
    /// `H`
    Helo,
    /// `M`
    Mail,
    /// `R`
    Rcpt,
    /// `T`
    Data,
    /// `L`
    Header,
    /// `N`
    Eoh,
    /// `B`
    Body,
    /// `E`
    Eom,
}

impl Stage {
    /// The command octet.
    pub fn code(self) -> u8 {
        match self {
            Self::Connect => b'C',
            Self::Helo => b'H',
            Self::Mail => b'M',
            Self::Rcpt => b'R',
            Self::Data => b'T',
            Self::Header => b'L',
            Self::Eoh => b'N',
            Self::Body => b'B',
            Self::Eom => b'E',
        }
    }

    /// A bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Helo => "helo",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::Header => "header",
            Self::Eoh => "eoh",
            Self::Body => "body",
            Self::Eom => "eom",
        }
    }

    /// The step flag by which a milter says it does not want this stage.
    pub fn skipped_by(self) -> u32 {
        match self {
            Self::Connect => step::NO_CONNECT,
            Self::Helo => step::NO_HELO,
            Self::Mail => step::NO_MAIL,
            Self::Rcpt => step::NO_RCPT,
            Self::Data => step::NO_DATA,
            Self::Header => step::NO_HEADERS,
            Self::Eoh => step::NO_EOH,
            Self::Body => step::NO_BODY,
            Self::Eom => 0,
        }
    }

    /// The step flag by which a milter says it will not answer this stage.
    pub fn unanswered_by(self) -> u32 {
        match self {
            Self::Connect => step::NR_CONNECT,
            Self::Helo => step::NR_HELO,
            Self::Mail => step::NR_MAIL,
            Self::Rcpt => step::NR_RCPT,
            Self::Data => step::NR_DATA,
            Self::Header => step::NR_HEADER,
            Self::Eoh => step::NR_EOH,
            Self::Body => step::NR_BODY,
            Self::Eom => 0,
        }
    }
}

/// What the MTA sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `O`: version, actions, steps.
    OptNeg {
        /// Protocol version.
        version: u32,
        /// `SMFIF_*` the MTA allows.
        actions: u32,
        /// `SMFIP_*` the MTA honours.
        steps: u32,
    },
    /// `D`: macros for the next command of `stage`.
    Macros {
        /// The stage they belong to.
        stage: Stage,
        /// `(name, value)`; names of more than one letter in braces (`{client_addr}`).
        pairs: Vec<(String, String)>,
    },
    /// `C`: the client's name (`[address]` when not verified), its address and port.
    Connect {
        /// Host name.
        hostname: String,
        /// Address and port, `None` when unknown.
        addr: Option<std::net::SocketAddr>,
    },
    /// `H`
    Helo(String),
    /// `M`: `<sender>` and its ESMTP parameters.
    Mail(Vec<String>),
    /// `R`: `<recipient>` and its ESMTP parameters.
    Rcpt(Vec<String>),
    /// `T`
    Data,
    /// `L`: one header, its name and value.
    Header(String, String),
    /// `N`
    Eoh,
    /// `B`: a piece of the body (at most [`BODY_CHUNK`] octets).
    Body(Bytes),
    /// `E`
    Eom,
    /// `A`: the transaction ends (RSET, a new MAIL); the connection stays.
    Abort,
    /// `Q`
    Quit,
}

impl Command {
    /// The packet without its length (the codec adds it).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        let strings = |out: &mut BytesMut, items: &[String]| {
            for item in items {
                out.put_slice(item.as_bytes());
                out.put_u8(0);
            }
        };
        match self {
            Self::OptNeg {
                version,
                actions,
                steps,
            } => {
                out.put_u8(b'O');
                out.put_u32(*version);
                out.put_u32(*actions);
                out.put_u32(*steps);
            }
            Self::Macros { stage, pairs } => {
                out.put_u8(b'D');
                out.put_u8(stage.code());
                for (name, value) in pairs {
                    strings(&mut out, &[name.clone(), value.clone()]);
                }
            }
            Self::Connect { hostname, addr } => {
                out.put_u8(b'C');
                strings(&mut out, std::slice::from_ref(hostname));
                match addr {
                    Some(addr) => {
                        out.put_u8(if addr.is_ipv4() { b'4' } else { b'6' });
                        out.put_u16(addr.port());
                        strings(&mut out, &[addr.ip().to_canonical().to_string()]);
                    }
                    None => out.put_u8(b'U'),
                }
            }
            Self::Helo(name) => {
                out.put_u8(b'H');
                strings(&mut out, std::slice::from_ref(name));
            }
            Self::Mail(args) => {
                out.put_u8(b'M');
                strings(&mut out, args);
            }
            Self::Rcpt(args) => {
                out.put_u8(b'R');
                strings(&mut out, args);
            }
            Self::Data => out.put_u8(b'T'),
            Self::Header(name, value) => {
                out.put_u8(b'L');
                strings(&mut out, &[name.clone(), value.clone()]);
            }
            Self::Eoh => out.put_u8(b'N'),
            Self::Body(piece) => {
                out.put_u8(b'B');
                out.put_slice(piece);
            }
            Self::Eom => out.put_u8(b'E'),
            Self::Abort => out.put_u8(b'A'),
            Self::Quit => out.put_u8(b'Q'),
        }
        out.freeze()
    }
}

/// A milter's answer to a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `c`: go on.
    Continue,
    /// `a`: accept the message (or, before MAIL, the session): this milter is not asked again.
    Accept,
    /// `r`: refuse (5xx).
    Reject,
    /// `t`: refuse for now (4xx).
    Tempfail,
    /// `d`: take the message and drop it.
    Discard,
    /// `y`: refuse with this SMTP reply (`550 5.7.1 text`, as the milter wrote it).
    Reply(String),
    /// `s`: no more body pieces, please (then end of message).
    Skip,
}

/// A change a milter asks for at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// `h`: a header at the end of the header section.
    AddHeader(String, String),
    /// `i`: a header at this position (0: the top).
    InsertHeader(u32, String, String),
    /// `m`: the `index`th header of this name (from 1) gets this value; empty deletes it.
    ChangeHeader(u32, String, String),
    /// `b`: a piece of the new body (the pieces, in order, are the whole body).
    ReplaceBody(Bytes),
    /// `+` / `2`: a recipient added (with its ESMTP parameters).
    AddRcpt(String, Option<String>),
    /// `-`: a recipient deleted.
    DeleteRcpt(String),
    /// `e`: the sender changed (with its ESMTP parameters).
    ChangeFrom(String, Option<String>),
    /// `q`: quarantine, with a reason.
    Quarantine(String),
}

impl Modification {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::AddHeader(..) => "add_header",
            Self::InsertHeader(..) => "insert_header",
            Self::ChangeHeader(..) => "change_header",
            Self::ReplaceBody(_) => "replace_body",
            Self::AddRcpt(..) => "add_rcpt",
            Self::DeleteRcpt(_) => "delete_rcpt",
            Self::ChangeFrom(..) => "change_from",
            Self::Quarantine(_) => "quarantine",
        }
    }

    /// The action the milter needs to have been allowed for it.
    pub fn needs(&self) -> u32 {
        match self {
            Self::AddHeader(..) | Self::InsertHeader(..) => action::ADD_HEADERS,
            Self::ChangeHeader(..) => action::CHANGE_HEADERS,
            Self::ReplaceBody(_) => action::CHANGE_BODY,
            Self::AddRcpt(_, None) => action::ADD_RCPT,
            Self::AddRcpt(_, Some(_)) => action::ADD_RCPT_PARAMS,
            Self::DeleteRcpt(_) => action::DELETE_RCPT,
            Self::ChangeFrom(..) => action::CHANGE_FROM,
            Self::Quarantine(_) => action::QUARANTINE,
        }
    }
}

/// One packet from a milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `O`: the milter's version, the actions it wants, the steps it skips or leaves
    /// unanswered (its macro requests, if any, are not used).
    OptNeg {
        /// Version.
        version: u32,
        /// `SMFIF_*`.
        actions: u32,
        /// `SMFIP_*`.
        steps: u32,
    },
    /// An answer to a stage.
    Verdict(Verdict),
    /// `p`: still working (the timeout starts again).
    Progress,
    /// A change, before the end-of-message verdict.
    Modification(Modification),
}

/// A packet that is not the milter protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// No command octet.
    #[error("an empty packet")]
    Empty,
    /// A command octet the protocol does not have.
    #[error("an unknown reply {0:?}")]
    Unknown(char),
    /// The data does not fit the command.
    #[error("a malformed {0:?} reply")]
    Malformed(char),
}

/// Parses one packet (its length already taken off).
pub fn parse(packet: &[u8]) -> Result<Reply, ProtocolError> {
    let (&code, data) = packet.split_first().ok_or(ProtocolError::Empty)?;
    let malformed = || ProtocolError::Malformed(code as char);
    let u32_at = |at: usize| -> Result<u32, ProtocolError> {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(malformed)
    };
    // NUL-terminated strings, exactly `n` of them (UTF-8 or not: lossy, they are headers and
    // addresses a milter wrote).
    let strings = |data: &[u8], n: usize| -> Result<Vec<String>, ProtocolError> {
        let body = data.strip_suffix(&[0]).ok_or_else(malformed)?;
        let parts: Vec<String> = body
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if parts.len() == n {
            Ok(parts)
        } else {
            Err(malformed())
        }
    };
    let two = |data: &[u8]| -> Result<(String, Option<String>), ProtocolError> {
        let body = data.strip_suffix(&[0]).ok_or_else(malformed)?;
        let mut parts = body.splitn(2, |b| *b == 0);
        let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let second = parts
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .filter(|s| !s.is_empty());
        if first.is_empty() || second.as_ref().is_some_and(|s| s.contains('\0')) {
            return Err(malformed());
        }
        Ok((first, second))
    };
    let reply = match code {
        b'O' => Reply::OptNeg {
            version: u32_at(0)?,
            actions: u32_at(4)?,
            steps: u32_at(8)?,
        },
        b'c' | b'a' | b'r' | b't' | b'd' | b's' | b'p' if !data.is_empty() => {
            return Err(malformed());
        }
        b'c' => Reply::Verdict(Verdict::Continue),
        b'a' => Reply::Verdict(Verdict::Accept),
        b'r' => Reply::Verdict(Verdict::Reject),
        b't' => Reply::Verdict(Verdict::Tempfail),
        b'd' => Reply::Verdict(Verdict::Discard),
        b's' => Reply::Verdict(Verdict::Skip),
        b'p' => Reply::Progress,
        b'y' => {
            let [text] = <[String; 1]>::try_from(strings(data, 1)?).map_err(|_| malformed())?;
            let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
            if !code.is_some_and(|c| (400..600).contains(&c))
                || text
                    .as_bytes()
                    .get(3)
                    .is_some_and(|b| !matches!(b, b' ' | b'-'))
            {
                return Err(malformed());
            }
            Reply::Verdict(Verdict::Reply(text))
        }
        b'h' => {
            let [name, value] =
                <[String; 2]>::try_from(strings(data, 2)?).map_err(|_| malformed())?;
            header_name(&name).ok_or_else(malformed)?;
            Reply::Modification(Modification::AddHeader(name, value))
        }
        b'i' | b'm' => {
            let index = u32_at(0)?;
            let [name, value] =
                <[String; 2]>::try_from(strings(&data[4..], 2)?).map_err(|_| malformed())?;
            header_name(&name).ok_or_else(malformed)?;
            Reply::Modification(if code == b'i' {
                Modification::InsertHeader(index, name, value)
            } else {
                Modification::ChangeHeader(index, name, value)
            })
        }
        b'b' => Reply::Modification(Modification::ReplaceBody(Bytes::copy_from_slice(data))),
        b'+' => {
            let [rcpt] = <[String; 1]>::try_from(strings(data, 1)?).map_err(|_| malformed())?;
            Reply::Modification(Modification::AddRcpt(rcpt, None))
        }
        b'2' => {
            let (rcpt, params) = two(data)?;
            Reply::Modification(Modification::AddRcpt(rcpt, params))
        }
        b'-' => {
            let [rcpt] = <[String; 1]>::try_from(strings(data, 1)?).map_err(|_| malformed())?;
            Reply::Modification(Modification::DeleteRcpt(rcpt))
        }
        b'e' => {
            let (from, params) = two(data)?;
            Reply::Modification(Modification::ChangeFrom(from, params))
        }
        b'q' => {
            let [reason] = <[String; 1]>::try_from(strings(data, 1)?).map_err(|_| malformed())?;
            Reply::Modification(Modification::Quarantine(reason))
        }
        other => return Err(ProtocolError::Unknown(other as char)),
    };
    Ok(reply)
}

/// A header name as RFC 5322 allows it (printable ASCII but `:`), or `None`.
fn header_name(name: &str) -> Option<()> {
    (!name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_garbage_is_refused() {
        assert_eq!(parse(b"c"), Ok(Reply::Verdict(Verdict::Continue)));
        assert_eq!(
            parse(b"y550 5.7.1 go away\0"),
            Ok(Reply::Verdict(Verdict::Reply("550 5.7.1 go away".into())))
        );
        assert_eq!(
            parse(b"hX-Spam\0yes\0"),
            Ok(Reply::Modification(Modification::AddHeader(
                "X-Spam".into(),
                "yes".into()
            )))
        );
        assert_eq!(
            parse(b"i\0\0\0\0DKIM-Signature\0v=1;\0"),
            Ok(Reply::Modification(Modification::InsertHeader(
                0,
                "DKIM-Signature".into(),
                "v=1;".into()
            )))
        );
        assert_eq!(
            parse(b"2<x@example.com>\0NOTIFY=NEVER\0"),
            Ok(Reply::Modification(Modification::AddRcpt(
                "<x@example.com>".into(),
                Some("NOTIFY=NEVER".into())
            )))
        );
        for bad in [
            &b""[..],
            b"Z",
            b"c extra",
            b"y250 ok\0",
            b"yhello\0",
            b"hBad Name\0v\0",
            b"hX\0",
            b"i\0\0",
            b"O\0\0\0\x06",
            b"q",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_encode_as_libmilter_reads_them() {
        let connect = Command::Connect {
            hostname: "[192.0.2.1]".into(),
            addr: Some("192.0.2.1:4711".parse().unwrap()),
        };
        assert_eq!(
            &connect.encode()[..],
            b"C[192.0.2.1]\x004\x12\x67192.0.2.1\0"
        );
        let macros = Command::Macros {
            stage: Stage::Mail,
            pairs: vec![("{mail_addr}".into(), "a@b".into())],
        };
        assert_eq!(&macros.encode()[..], b"DM{mail_addr}\0a@b\0");
        assert_eq!(
            &Command::Mail(vec!["<a@b>".into(), "SIZE=10".into()]).encode()[..],
            b"M<a@b>\0SIZE=10\0"
        );
    }
}
