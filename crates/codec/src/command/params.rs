//! MAIL and RCPT parameters (`keyword[=value]`, RFC 5321 §4.1.2): read from the client's line
//! as written, checked, and relayed verbatim. smtp-proto reads the path; the parameters are
//! read here so that their values reach a backend exactly as the client sent them (xtext
//! stays encoded).

use crate::ext::{Extension, Extensions};

use super::CommandError;

/// One parameter as the client sent it: the keyword upper case, the value verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// `esmtp-keyword`, upper case.
    pub keyword: String,
    /// `esmtp-value`, as sent.
    pub value: Option<String>,
}

impl Param {
    /// A parameter with a value.
    pub fn new(keyword: &str, value: Option<&str>) -> Self {
        Self {
            keyword: keyword.to_ascii_uppercase(),
            value: value.map(str::to_owned),
        }
    }

    /// The extension that defines this parameter (`None`: one attitude does not know).
    pub fn extension(&self) -> Option<Extension> {
        Some(match self.keyword.as_str() {
            "RET" | "ENVID" | "NOTIFY" | "ORCPT" => Extension::Dsn,
            "AUTH" => Extension::Auth,
            "REQUIRETLS" => Extension::RequireTls,
            "MT-PRIORITY" => Extension::MtPriority,
            "BY" => Extension::DeliverBy,
            "HOLDFOR" | "HOLDUNTIL" => Extension::FutureRelease,
            "MTRK" => Extension::Mtrk,
            "RRVS" => Extension::Rrvs,
            _ => return None,
        })
    }

    pub(super) fn encode(&self, line: &mut String) {
        line.push(' ');
        line.push_str(&self.keyword);
        if let Some(value) = &self.value {
            line.push('=');
            line.push_str(value);
        }
    }
}

/// The extensions `params` need a backend to offer (AUTH is dropped for one that does not
/// offer it, RFC 4954 §5, so it is never needed).
pub(super) fn needs(params: &[Param]) -> Extensions {
    params
        .iter()
        .filter_map(Param::extension)
        .filter(|e| *e != Extension::Auth)
        .collect()
}

/// Which command the parameters belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Mail,
    Rcpt,
}

/// The parameters after a path, each checked. Non-ASCII values are allowed here (RFC 6533
/// under SMTPUTF8); the session checks them against the transaction.
pub(super) fn parse(text: &str, verb: Verb) -> Result<Vec<Param>, CommandError> {
    let mut params: Vec<Param> = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let (keyword, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        if keyword.is_empty()
            || !keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(CommandError::Syntax(match verb {
                Verb::Mail => "MAIL FROM:<reverse-path> [parameters]",
                Verb::Rcpt => "RCPT TO:<forward-path> [parameters]",
            }));
        }
        let param = Param::new(keyword, value);
        let invalid = || CommandError::InvalidParameter(param.keyword.clone());
        if let Some(value) = value
            && (value.is_empty() || !value.chars().all(esmtp_value_char))
        {
            return Err(invalid());
        }
        if params.iter().any(|p| p.keyword == param.keyword) {
            return Err(invalid());
        }
        let ok = match (verb, param.keyword.as_str(), value) {
            (Verb::Mail, "SIZE", Some(v)) => v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()),
            (Verb::Mail, "BODY", Some(v)) => ["7BIT", "8BITMIME", "BINARYMIME"]
                .iter()
                .any(|b| b.eq_ignore_ascii_case(v)),
            (Verb::Mail, "SMTPUTF8" | "REQUIRETLS", None) => true,
            (Verb::Mail, "RET", Some(v)) => {
                v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS")
            }
            (Verb::Mail, "ENVID", Some(v)) => v.len() <= 100 && is_xtext(v),
            // `AUTH=<>` or an xtext addr-spec (RFC 4954 §5).
            (Verb::Mail, "AUTH", Some(v)) => v.len() <= 500 && (v == "<>" || is_xtext(v)),
            (Verb::Mail, "MT-PRIORITY", Some(v)) => {
                v.parse::<i8>().is_ok_and(|p| (-9..=9).contains(&p))
            }
            (Verb::Mail, "BY" | "HOLDFOR" | "HOLDUNTIL" | "MTRK", Some(_)) => true,
            (Verb::Rcpt, "NOTIFY", Some(v)) => is_notify(v),
            (Verb::Rcpt, "ORCPT", Some(v)) => v.split_once(';').is_some_and(|(kind, addr)| {
                !kind.is_empty()
                    && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !addr.is_empty()
                    && addr.len() <= 500
                    && is_xtext(addr)
            }),
            (Verb::Rcpt, "RRVS", Some(_)) => true,
            (_, keyword, _) if is_known(verb, keyword) => false,
            _ => return Err(CommandError::UnsupportedParameter(param.keyword)),
        };
        if !ok {
            return Err(invalid());
        }
        params.push(param);
    }
    Ok(params)
}

fn is_known(verb: Verb, keyword: &str) -> bool {
    match verb {
        Verb::Mail => [
            "SIZE",
            "BODY",
            "SMTPUTF8",
            "REQUIRETLS",
            "RET",
            "ENVID",
            "AUTH",
            "MT-PRIORITY",
            "BY",
            "HOLDFOR",
            "HOLDUNTIL",
            "MTRK",
        ]
        .contains(&keyword),
        Verb::Rcpt => ["NOTIFY", "ORCPT", "RRVS"].contains(&keyword),
    }
}

/// `esmtp-value = 1*(%d33-60 / %d62-126)`, and UTF-8 (RFC 6531 §3.3).
fn esmtp_value_char(c: char) -> bool {
    !c.is_ascii() || (('!'..='~').contains(&c) && c != '=')
}

/// `xtext = *( xchar / hexchar )` (RFC 3461 §4): `+` only as `+XX` with upper-case hex; and
/// UTF-8 (RFC 6533 `utf-8-addr-xtext`).
fn is_xtext(value: &str) -> bool {
    let bytes = value.as_bytes();
    let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            if !(hex(bytes.get(i + 1)) && hex(bytes.get(i + 2))) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// `NEVER` alone, or a list of `SUCCESS`, `FAILURE`, `DELAY` (RFC 3461 §4.1).
fn is_notify(value: &str) -> bool {
    if value.eq_ignore_ascii_case("NEVER") {
        return true;
    }
    let mut seen = Vec::new();
    value.split(',').all(|v| {
        let v = v.to_ascii_uppercase();
        let ok = ["SUCCESS", "FAILURE", "DELAY"].contains(&v.as_str()) && !seen.contains(&v);
        seen.push(v);
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_as_sent() {
        let params = parse(" RET=hdrs ENVID=QQ+2Bx  AUTH=<>", Verb::Mail).unwrap();
        assert_eq!(
            params,
            vec![
                Param::new("RET", Some("hdrs")),
                Param::new("ENVID", Some("QQ+2Bx")),
                Param::new("AUTH", Some("<>")),
            ]
        );
        assert_eq!(needs(&params).to_string(), "DSN");
        let params = parse(
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example",
            Verb::Rcpt,
        )
        .unwrap();
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn bad_values_and_unknown_keywords() {
        let invalid = |k: &str| Err(CommandError::InvalidParameter(k.into()));
        assert_eq!(parse("RET=ALL", Verb::Mail), invalid("RET"));
        assert_eq!(parse("ENVID=a+2", Verb::Mail), invalid("ENVID"));
        assert_eq!(parse("ENVID=a+zz", Verb::Mail), invalid("ENVID"));
        assert_eq!(parse("NOTIFY=NEVER,DELAY", Verb::Rcpt), invalid("NOTIFY"));
        assert_eq!(parse("NOTIFY=DELAY,DELAY", Verb::Rcpt), invalid("NOTIFY"));
        assert_eq!(parse("ORCPT=a@b", Verb::Rcpt), invalid("ORCPT"));
        assert_eq!(parse("SMTPUTF8=yes", Verb::Mail), invalid("SMTPUTF8"));
        assert_eq!(parse("RET=FULL RET=HDRS", Verb::Mail), invalid("RET"));
        assert_eq!(parse("MT-PRIORITY=12", Verb::Mail), invalid("MT-PRIORITY"));
        assert_eq!(
            parse("FOO=bar", Verb::Mail),
            Err(CommandError::UnsupportedParameter("FOO".into()))
        );
        assert_eq!(
            parse("RET=FULL", Verb::Rcpt),
            Err(CommandError::UnsupportedParameter("RET".into()))
        );
        assert!(matches!(
            parse("=x", Verb::Mail),
            Err(CommandError::Syntax(_))
        ));
    }
}
