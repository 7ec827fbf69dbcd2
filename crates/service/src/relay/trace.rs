//! attitude's own trace header (RFC 5321 §4.4): a `Received:` line at the top of every
//! relayed message, saying who handed it over (HELO, address), to whom (attitude's hostname),
//! how (the RFC 3848 / RFC 6531 protocol keyword, TLS version and cipher) and when, with an id
//! that the session log carries too. Never the login name.

use std::fmt::Write as _;
use std::net::IpAddr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::address::canonical_ip;
use crate::request::Session;

/// `WITH` protocol keyword: `ESMTP` + `S` (TLS) + `A` (authenticated), `UTF8SMTP...` for a
/// SMTPUTF8 transaction, `SMTP` after HELO.
fn protocol(session: &Session, smtputf8: bool) -> String {
    let extended = session.helo.as_ref().is_some_and(|h| h.extended);
    let mut keyword = String::from(match (smtputf8, extended) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    });
    if session.tls.is_some() {
        keyword.push('S');
    }
    if session.auth.is_some() {
        keyword.push('A');
    }
    keyword
}

/// Text a client chose, made safe for a header comment: printable, no parentheses or
/// backslashes, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\' | ';'))
        .take(100)
        .collect()
}

/// The id of the `n`th message of `session` (`session` is the id in the session log).
pub(super) fn message_id(session: &Session) -> String {
    format!("{}.{}", session.id, session.messages + 1)
}

/// The `Received:` header for the message `id` ([`message_id`]) now starting in `session`,
/// ending in CRLF.
pub(super) fn received(hostname: &str, session: &Session, smtputf8: bool, id: &str) -> String {
    let helo = session
        .helo
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |h| printable(&h.name));
    let address = match canonical_ip(session.client.ip()) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut header = format!(
        "Received: from {helo} ([{address}])\r\n\tby {hostname} (attitude) with {} id {}",
        protocol(session, smtputf8),
        id,
    );
    if let Some(tls) = &session.tls {
        // `TLSv1_3` as mail logs write it: `TLSv1.3`.
        let _ = write!(
            header,
            "\r\n\t(using {} with cipher {})",
            tls.version.replace('_', "."),
            tls.cipher
        );
    }
    let now = OffsetDateTime::now_utc()
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into());
    let _ = write!(header, ";\r\n\t{now}\r\n");
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Helo;

    #[test]
    fn a_received_line_for_each_kind_of_session() {
        let mut session = Session::new(
            7,
            "[2001:db8::5]:4000".parse().unwrap(),
            "[::1]:25".parse().unwrap(),
        );
        session.helo = Some(Helo {
            name: "client.example (evil)\\".into(),
            extended: true,
        });
        let header = received("mx.example", &session, false, &message_id(&session));
        assert!(
            header.starts_with(
                "Received: from client.example evil ([IPv6:2001:db8::5])\r\n\tby mx.example (attitude) with ESMTP id 7.1;\r\n\t"
            ),
            "{header}"
        );
        assert!(header.ends_with(" +0000\r\n"), "{header}");
        session.tls = Some(attitude_edge::TlsInfo {
            version: "TLSv1_3",
            cipher: "TLS13_AES_256_GCM_SHA384",
        });
        session.auth = Some("user".into());
        session.messages = 2;
        let header = received("mx.example", &session, true, &message_id(&session));
        assert!(
            header.contains(
                "with UTF8SMTPSA id 7.3\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384);"
            ),
            "{header}"
        );
        assert!(!header.contains("user"));
    }
}
