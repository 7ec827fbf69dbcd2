//! SMTP AUTH (RFC 4954) as attitude relays it: which mechanisms to offer, and who the client
//! authenticated as.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// The mechanisms attitude relays (the backend checks the credentials).
pub const MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];

/// What to offer in EHLO: the configured mechanisms the backend offers too, and only over TLS
/// unless plaintext is explicitly allowed.
#[derive(Debug)]
pub struct AuthOffer {
    configured: Vec<String>,
    allow_plaintext: bool,
    backend: Arc<RwLock<Vec<String>>>,
}

impl AuthOffer {
    /// Offers `configured` (upper case, among [`MECHANISMS`]) once a backend offers them.
    pub fn new(configured: Vec<String>, allow_plaintext: bool) -> Self {
        Self {
            configured,
            allow_plaintext,
            backend: Arc::default(),
        }
    }

    /// Another offer (another listener's, or a reloaded configuration's) that follows the same
    /// backends.
    pub fn sharing_backend(&self, configured: Vec<String>, allow_plaintext: bool) -> Self {
        Self {
            configured,
            allow_plaintext,
            backend: self.backend.clone(),
        }
    }

    /// Records what a backend's EHLO offered (`AUTH PLAIN LOGIN ...`).
    pub fn set_backend(&self, mechanisms: Vec<String>) {
        let mut backend = self.backend.write().expect("auth offer lock");
        if *backend != mechanisms {
            tracing::info!(?mechanisms, "backend AUTH mechanisms");
            *backend = mechanisms;
        }
    }

    /// The mechanisms to offer to a client on a connection that is (or is not) encrypted.
    pub fn offered(&self, tls: bool) -> Vec<String> {
        if !tls && !self.allow_plaintext {
            return Vec::new();
        }
        let backend = self.backend.read().expect("auth offer lock");
        self.configured
            .iter()
            .filter(|m| backend.contains(m))
            .cloned()
            .collect()
    }
}

/// One AUTH exchange as it goes: what is needed to name its login (the mechanism, the initial
/// response and the first answers; the rest, the password included for LOGIN, is not kept).
#[derive(Debug, Clone)]
pub struct Exchange {
    mechanism: String,
    initial: Option<String>,
    answers: Vec<Bytes>,
}

impl Exchange {
    /// Answers kept (PLAIN and LOGIN name the user in the first).
    const ANSWERS: usize = 2;

    /// An exchange begun by `AUTH mechanism [initial]`.
    pub fn new(mechanism: &str, initial: Option<&str>) -> Self {
        Self {
            mechanism: mechanism.to_owned(),
            initial: initial.map(str::to_owned),
            answers: Vec::new(),
        }
    }

    /// Records one of the client's answers.
    pub fn answer(&mut self, line: &Bytes) {
        if self.answers.len() < Self::ANSWERS {
            self.answers.push(line.clone());
        }
    }

    /// The login, once the exchange has shown it.
    pub fn login(&self) -> Option<String> {
        login(&self.mechanism, self.initial.as_deref(), &self.answers)
    }
}

/// The login a successful exchange authenticated: PLAIN's authentication identity, or LOGIN's
/// user name. `initial` is the AUTH command's initial response, `lines` the client's answers.
pub fn login(mechanism: &str, initial: Option<&str>, lines: &[Bytes]) -> Option<String> {
    let decode = |b64: &[u8]| STANDARD.decode(b64.trim_ascii()).ok();
    let first = match initial {
        Some(i) if i != "=" => decode(i.as_bytes()),
        _ => lines.first().and_then(|l| decode(l)),
    }?;
    let name = match mechanism {
        // authzid NUL authcid NUL password
        "PLAIN" => first.split(|&b| b == 0).nth(1)?.to_vec(),
        "LOGIN" => first,
        _ => return None,
    };
    String::from_utf8(name).ok().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins() {
        let plain = STANDARD.encode(b"\0alice\0secret");
        assert_eq!(login("PLAIN", Some(&plain), &[]).as_deref(), Some("alice"));
        assert_eq!(
            login("PLAIN", None, &[Bytes::from(plain.clone())]).as_deref(),
            Some("alice")
        );
        let user = STANDARD.encode(b"bob");
        assert_eq!(
            login(
                "LOGIN",
                None,
                &[Bytes::from(user), Bytes::from_static(b"cGFzcw==")]
            )
            .as_deref(),
            Some("bob")
        );
        assert_eq!(login("PLAIN", Some("not base64!"), &[]), None);
        assert_eq!(login("CRAM-MD5", Some("eA=="), &[]), None);
    }

    #[test]
    fn offer_needs_the_backend_and_tls() {
        let offer = AuthOffer::new(vec!["PLAIN".into(), "LOGIN".into()], false);
        assert!(
            offer.offered(true).is_empty(),
            "the backend offers nothing yet"
        );
        offer.set_backend(vec!["LOGIN".into(), "CRAM-MD5".into()]);
        assert_eq!(offer.offered(true), ["LOGIN"]);
        assert!(offer.offered(false).is_empty(), "not over plaintext");
        let lab = AuthOffer::new(vec!["PLAIN".into()], true);
        lab.set_backend(vec!["PLAIN".into()]);
        assert_eq!(lab.offered(false), ["PLAIN"]);
    }
}
