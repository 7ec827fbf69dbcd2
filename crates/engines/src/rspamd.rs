//! rspamd's `POST /checkv2`: the message as the body, the envelope and session in request
//! headers (`IP`, `Helo`, `From`, one `Rcpt` per recipient, `User`, `Queue-Id`,
//! `TLS-Version`/`TLS-Cipher`, `Hostname`, `Settings-ID`; `Flags: milter` to be told which
//! headers to add and remove), over a pooled HTTP/1.1 client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Largest reply body read (rspamd's replies are a few KiB, with every symbol).
const MAX_REPLY: usize = 1024 * 1024;

/// What rspamd is told about a message besides its content.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The client's address.
    pub ip: Option<String>,
    /// HELO/EHLO name.
    pub helo: Option<String>,
    /// The reverse-path (`""` for the null sender).
    pub from: Option<String>,
    /// The recipients.
    pub rcpts: Vec<String>,
    /// The authenticated login.
    pub user: Option<String>,
    /// The message's id in logs.
    pub queue_id: Option<String>,
    /// TLS version and cipher, when encrypted.
    pub tls: Option<(String, String)>,
    /// The client's verified host name.
    pub hostname: Option<String>,
    /// Which rspamd settings apply.
    pub settings_id: Option<String>,
}

/// rspamd's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `no action`.
    NoAction,
    /// `greylist`.
    Greylist,
    /// `add header`.
    AddHeader,
    /// `rewrite subject`.
    RewriteSubject,
    /// `soft reject`.
    SoftReject,
    /// `quarantine`.
    Quarantine,
    /// `discard`.
    Discard,
    /// `reject`.
    Reject,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no action" => Self::NoAction,
            "greylist" => Self::Greylist,
            "add header" => Self::AddHeader,
            "rewrite subject" => Self::RewriteSubject,
            "soft reject" => Self::SoftReject,
            "quarantine" => Self::Quarantine,
            "discard" => Self::Discard,
            "reject" => Self::Reject,
            _ => return None,
        })
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoAction => "no_action",
            Self::Greylist => "greylist",
            Self::AddHeader => "add_header",
            Self::RewriteSubject => "rewrite_subject",
            Self::SoftReject => "soft_reject",
            Self::Quarantine => "quarantine",
            Self::Discard => "discard",
            Self::Reject => "reject",
        }
    }
}

/// Which occurrences of a header rspamd asks to remove: `0` all, `n` the n-th, `-n` the n-th
/// from the end (rspamd's milter convention).
pub type Occurrence = i64;

/// rspamd's verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// The score, and the score that rejects.
    pub score: f64,
    /// `required_score`.
    pub required_score: f64,
    /// `messages.smtp_message`, as rspamd wrote it.
    pub smtp_message: Option<String>,
    /// The rewritten subject (`rewrite subject`).
    pub subject: Option<String>,
    /// `milter.add_headers`: name and value, in the order rspamd gave them.
    pub add_headers: Vec<(String, String)>,
    /// `milter.remove_headers`.
    pub remove_headers: Vec<(String, Occurrence)>,
}

/// Why a check gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum RspamdError {
    /// No connection, or it broke.
    #[error("rspamd request failed: {0}")]
    Http(String),
    /// No reply within the timeout.
    #[error("rspamd did not answer in time")]
    Timeout,
    /// A reply that is not a verdict (an HTTP error, JSON without an action).
    #[error("rspamd answered {0}")]
    Protocol(String),
}

impl RspamdError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http(_) => "connect",
            Self::Timeout => "timeout",
            Self::Protocol(_) => "protocol",
        }
    }
}

/// An rspamd normal worker (or proxy), reached over pooled HTTP/1.1 connections.
#[derive(Debug, Clone)]
pub struct Rspamd {
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    milter: bool,
}

impl Rspamd {
    /// A client for the worker at `base` (`http://127.0.0.1:11333`); `timeout` bounds a whole
    /// check; `milter` asks for header changes (`Flags: milter`).
    pub fn new(base: &str, timeout: Duration, milter: bool) -> Result<Self, String> {
        let url = Self::checkv2(base)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self {
            url,
            client,
            timeout,
            milter,
        })
    }

    /// The `checkv2` address of the worker at `base`, or what is wrong with `base`.
    pub fn checkv2(base: &str) -> Result<Uri, String> {
        let base = base.trim_end_matches('/');
        let url: Uri = format!("{base}/checkv2")
            .parse()
            .map_err(|e| format!("{base:?} is not a URL: {e}"))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(format!(
                "{base:?}: give the worker as http://host:port (rspamd's normal worker speaks \
                 plain HTTP; put it on loopback or a private network)"
            ));
        }
        Ok(url)
    }

    /// Checks `message` (the whole message, CRLF lines) sent with `envelope`.
    pub async fn check(&self, envelope: &Envelope, message: Bytes) -> Result<Verdict, RspamdError> {
        let request = self.request(envelope, message)?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| RspamdError::Http(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| RspamdError::Http(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(RspamdError::Protocol(format!("HTTP {status}: {text}")));
            }
            parse(&body)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RspamdError::Timeout),
        }
    }

    fn request(
        &self,
        envelope: &Envelope,
        message: Bytes,
    ) -> Result<Request<Full<Bytes>>, RspamdError> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_LENGTH, message.len());
        let headers = builder.headers_mut().expect("a valid request so far");
        let mut put = |name: &'static str, value: &str| {
            // An address or name with a control character is not sent (it cannot be one).
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(HeaderName::from_static(name), value);
            }
        };
        let e = envelope;
        if let Some(ip) = &e.ip {
            put("ip", ip);
        }
        if let Some(helo) = &e.helo {
            put("helo", helo);
        }
        if let Some(from) = &e.from {
            put("from", if from.is_empty() { "<>" } else { from });
        }
        for rcpt in &e.rcpts {
            put("rcpt", rcpt);
        }
        if let Some(user) = &e.user {
            put("user", user);
        }
        if let Some(id) = &e.queue_id {
            put("queue-id", id);
        }
        if let Some((version, cipher)) = &e.tls {
            put("tls-version", version);
            put("tls-cipher", cipher);
        }
        if let Some(host) = &e.hostname {
            put("hostname", host);
        }
        if let Some(id) = &e.settings_id {
            put("settings-id", id);
        }
        if self.milter {
            put("flags", "milter");
        }
        builder
            .body(Full::new(message))
            .map_err(|e| RspamdError::Http(e.to_string()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a checkv2 reply.
fn parse(body: &[u8]) -> Result<Verdict, RspamdError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| RspamdError::Protocol(format!("JSON that does not parse: {e}")))?;
    let action = json
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| RspamdError::Protocol("a reply without an action".into()))?;
    let action = Action::parse(action)
        .ok_or_else(|| RspamdError::Protocol(format!("an unknown action {action:?}")))?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let mut add_headers = Vec::new();
    let mut remove_headers = Vec::new();
    if let Some(milter) = json.get("milter") {
        if let Some(add) = milter.get("add_headers").and_then(Value::as_object) {
            for (name, v) in add {
                // A value is a string, `{value, order}`, or a list of either.
                let values = match v {
                    Value::Array(list) => list.iter().collect(),
                    one => vec![one],
                };
                for v in values {
                    let value = match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Object(o) => text(o.get("value")),
                        _ => None,
                    };
                    if let Some(value) = value {
                        add_headers.push((name.clone(), value));
                    }
                }
            }
        }
        if let Some(remove) = milter.get("remove_headers").and_then(Value::as_object) {
            for (name, v) in remove {
                remove_headers.push((name.clone(), v.as_i64().unwrap_or(0)));
            }
        }
    }
    Ok(Verdict {
        action,
        score: json.get("score").and_then(Value::as_f64).unwrap_or(0.0),
        required_score: json
            .get("required_score")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        smtp_message: text(json.pointer("/messages/smtp_message")),
        subject: text(json.get("subject")),
        add_headers,
        remove_headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_gives_its_action_message_and_header_changes() {
        let body = br#"{"is_skipped":false,"score":15.5,"required_score":15.0,
            "action":"reject","symbols":{},"messages":{"smtp_message":"Gtube pattern"},
            "milter":{"add_headers":{"X-Spamd-Result":{"value":"default: True","order":0},
            "X-Spam":"Yes","X-Two":[{"value":"a","order":0},"b"]},
            "remove_headers":{"X-Spam":0,"X-Old":1}}}"#;
        let v = parse(body).unwrap();
        assert_eq!(v.action, Action::Reject);
        assert_eq!(v.smtp_message.as_deref(), Some("Gtube pattern"));
        assert_eq!(v.score, 15.5);
        assert!(
            v.add_headers
                .contains(&("X-Spamd-Result".into(), "default: True".into()))
        );
        assert!(v.add_headers.contains(&("X-Spam".into(), "Yes".into())));
        assert!(v.add_headers.contains(&("X-Two".into(), "b".into())));
        assert!(v.remove_headers.contains(&("X-Old".into(), 1)));
        assert!(parse(br#"{"action":"launch"}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }

    #[test]
    fn only_a_plain_http_worker_is_taken() {
        assert!(Rspamd::new("http://127.0.0.1:11333", Duration::from_secs(1), false).is_ok());
        assert!(Rspamd::new("127.0.0.1:11333", Duration::from_secs(1), false).is_err());
        assert!(Rspamd::new("https://rspamd", Duration::from_secs(1), false).is_err());
    }
}
