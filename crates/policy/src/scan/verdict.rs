//! From what the engines said to what the message gets: one reply (the strictest: a 5xx over a
//! 4xx, ClamAV's before rspamd's at the same class) or the header changes to make; every
//! result counted under `attitude_scans_total{engine, result}` and the policy decisions.

use attitude_codec::{EnhancedStatus, Reply};
use attitude_engines::clamav::{ClamError, ClamVerdict};
use attitude_engines::rspamd::{Action, RspamdError, Verdict};
use attitude_layers::Mode;
use attitude_service::Request;

use super::headers::HeaderEdits;
use super::layer::{Fallback, ScanConfig, ScanMetrics};

/// What became of ClamAV's scan of one message.
#[derive(Debug)]
pub(super) enum ClamOutcome {
    /// Not configured for this listener.
    Off,
    /// Over `max_size`: not scanned.
    Oversize,
    /// clamd's answer.
    Scanned(Result<ClamVerdict, ClamError>),
}

/// What became of rspamd's check of one message.
#[derive(Debug)]
pub(super) enum RspamdOutcome {
    /// Not configured for this listener.
    Off,
    /// Not checked, and its result: `skipped_oversize`, `skipped_budget`,
    /// `skipped_authenticated`, `skipped_trusted`.
    Skipped(&'static str),
    /// rspamd's answer.
    Checked(Result<Verdict, RspamdError>),
}

/// The decision on one message.
#[derive(Debug, Default)]
pub(super) struct Decision {
    /// The reply that refuses it (enforced).
    pub refusal: Option<Reply>,
    /// The changes to make to its header section (only when held).
    pub edits: HeaderEdits,
}

/// Made one printable ASCII line of at most 200 characters (it becomes an SMTP reply).
fn reply_text(text: Option<&str>, default: &str) -> String {
    let text = text.unwrap_or(default);
    let mut out = String::with_capacity(text.len().min(200));
    for c in text.chars() {
        let c = if c.is_ascii_graphic() { c } else { ' ' };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() == 200 {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    if out.is_empty() {
        default.to_string()
    } else {
        out
    }
}

fn error_label(kind: &str) -> &'static str {
    match kind {
        "connect" => "error_connect",
        "timeout" => "error_timeout",
        "io" => "error_io",
        _ => "error_protocol",
    }
}

/// Keeps the stricter of two refusals: a 5xx over a 4xx, else the first.
fn stricter(a: Option<Reply>, b: Option<Reply>) -> Option<Reply> {
    match (a, b) {
        (Some(a), Some(b)) if b.code() >= 500 && a.code() < 500 => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// The decision on the message of `req` from both outcomes; `held` says header changes can be
/// made.
pub(super) fn decide(
    config: &ScanConfig,
    req: &Request,
    clam: ClamOutcome,
    rspamd: RspamdOutcome,
    held: bool,
) -> Decision {
    let mut decision = Decision::default();
    let from_clam = clamav(config, req, clam);
    let from_rspamd = rspamd_decision(config, req, rspamd, held, &mut decision.edits);
    decision.refusal = stricter(from_clam, from_rspamd);
    decision
}

fn clamav(config: &ScanConfig, req: &Request, outcome: ClamOutcome) -> Option<Reply> {
    let policy = config.clamav.as_ref()?;
    let enforce = policy.mode == Mode::Enforce;
    let s = &req.session;
    let (result, reply) = match outcome {
        ClamOutcome::Off => return None,
        ClamOutcome::Scanned(Ok(ClamVerdict::Clean)) => ("clean", None),
        ClamOutcome::Scanned(Ok(ClamVerdict::Found(name))) => {
            let name = reply_text(Some(&name), "unknown");
            tracing::info!(session = s.id, client = %s.client, signature = %name, dry_run = !enforce, "virus found");
            let text = format!("Virus found: {name}");
            (
                "virus",
                Some(Reply::new(554, EnhancedStatus::new(5, 7, 1), text)),
            )
        }
        ClamOutcome::Oversize | ClamOutcome::Scanned(Ok(ClamVerdict::SizeLimit)) => (
            "oversize",
            (policy.on_oversize == Fallback::Tempfail).then(|| {
                Reply::new(
                    451,
                    EnhancedStatus::new(4, 3, 4),
                    "Message too big for the virus scanner; try again later",
                )
            }),
        ),
        ClamOutcome::Scanned(Err(error)) => {
            tracing::warn!(session = s.id, %error, "clamav: no verdict");
            (
                error_label(error.kind()),
                (policy.on_error == Fallback::Tempfail).then(|| {
                    Reply::new(
                        451,
                        EnhancedStatus::new(4, 3, 0),
                        "Virus scanner unavailable; try again later",
                    )
                }),
            )
        }
    };
    ScanMetrics::result("clamav", result);
    match reply {
        Some(reply) => {
            policy.decisions.refused(reply.code(), enforce);
            enforce.then_some(reply)
        }
        None => {
            policy.decisions.allow.increment(1);
            None
        }
    }
}

fn rspamd_decision(
    config: &ScanConfig,
    req: &Request,
    outcome: RspamdOutcome,
    held: bool,
    edits: &mut HeaderEdits,
) -> Option<Reply> {
    let policy = config.rspamd.as_ref()?;
    let enforce = policy.mode == Mode::Enforce;
    let s = &req.session;
    let verdict = match outcome {
        RspamdOutcome::Off => return None,
        RspamdOutcome::Skipped(result) => {
            ScanMetrics::result("rspamd", result);
            policy.decisions.allow.increment(1);
            return None;
        }
        RspamdOutcome::Checked(Err(error)) => {
            tracing::warn!(session = s.id, %error, "rspamd: no verdict");
            ScanMetrics::result("rspamd", error_label(error.kind()));
            if policy.on_error == Fallback::Tempfail {
                policy.decisions.refused(451, enforce);
                return enforce.then(|| {
                    Reply::new(
                        451,
                        EnhancedStatus::new(4, 3, 0),
                        "Spam scanner unavailable; try again later",
                    )
                });
            }
            policy.decisions.allow.increment(1);
            return None;
        }
        RspamdOutcome::Checked(Ok(verdict)) => verdict,
    };
    ScanMetrics::result("rspamd", verdict.action.label());
    let message = verdict.smtp_message.as_deref();
    let reply = match verdict.action {
        Action::Reject | Action::Discard => Some(Reply::new(
            554,
            EnhancedStatus::new(5, 7, 1),
            reply_text(message, "Spam message rejected"),
        )),
        Action::SoftReject => Some(Reply::new(
            451,
            EnhancedStatus::new(4, 7, 1),
            reply_text(message, "Try again later"),
        )),
        Action::Greylist => Some(Reply::new(
            451,
            EnhancedStatus::new(4, 7, 1),
            reply_text(message, "Greylisted, try again later"),
        )),
        _ => None,
    };
    if let Some(reply) = reply {
        tracing::info!(session = s.id, client = %s.client, action = verdict.action.label(), score = verdict.score, reply = %reply, dry_run = !enforce, "rspamd refused the message");
        policy.decisions.refused(reply.code(), enforce);
        return enforce.then_some(reply);
    }
    policy.decisions.allow.increment(1);
    if held && enforce {
        edits.remove.extend(verdict.remove_headers);
        edits.add.extend(verdict.add_headers);
        match verdict.action {
            Action::RewriteSubject => edits.subject = verdict.subject,
            Action::AddHeader => edits.add.extend(policy.spam_headers.iter().cloned()),
            Action::Quarantine => {
                edits.add.extend(policy.spam_headers.iter().cloned());
                edits.add.push((
                    "X-Spam-Quarantine".into(),
                    format!("rspamd, score {:.2}", verdict.score),
                ));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scanner_message_becomes_one_short_printable_line() {
        assert_eq!(reply_text(Some("Gtube pattern"), "x"), "Gtube pattern");
        assert_eq!(
            reply_text(Some("two\r\nlines\tand é"), "x"),
            "two lines and"
        );
        assert_eq!(reply_text(Some(&"a".repeat(300)), "x").len(), 200);
        assert_eq!(reply_text(Some(" \r\n"), "default"), "default");
    }

    #[test]
    fn a_permanent_refusal_wins_over_a_temporary_one() {
        let r = |c| Some(Reply::plain(c, "x"));
        assert_eq!(stricter(r(451), r(554)).unwrap().code(), 554);
        assert_eq!(stricter(r(554), r(451)).unwrap().code(), 554);
        assert_eq!(stricter(None, r(451)).unwrap().code(), 451);
        assert!(stricter(None, None).is_none());
    }
}
