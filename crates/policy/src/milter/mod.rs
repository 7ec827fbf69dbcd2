//! Milters: the mail filters operators already run (opendkim, opendmarc, clamav-milter,
//! spamass-milter, rspamd's proxy), asked as Postfix's `smtpd_milters` asks them.
//!
//! - one connection per session and milter, opened at the session's first MAIL (a session
//!   that never sends mail costs the milters nothing), told the connection and HELO then;
//! - MAIL, RCPT and DATA asked as they come (a refusal is that command's reply); RSET, a new
//!   MAIL or HELO abort the milters' transaction; the session's end is their QUIT;
//! - the message is held, then at its end each milter is sent its headers, body and end of
//!   message in turn, each seeing what the previous ones changed; header and body changes are
//!   applied, then the message goes on to the backend. A refusal fails it before the backend
//!   saw any of it; attitude never says 250 to a message no backend took (DISCARD is a
//!   refusal unless `discard = "accept"`);
//! - a milter that is down, too slow or not speaking the protocol gets its `default_action`:
//!   accept (go on without it), tempfail or reject (every further command of the session);
//!   what it sent before failing is not applied;
//! - envelope changes (recipients added or deleted, a new sender): the new sender and each
//!   added recipient pass relay control and the rates again (`recheck`), then the backend's
//!   transaction is redone (RSET, MAIL, every recipient: the relay applies the routes); a
//!   change that does not pass fails the message with `envelope_code`, counted;
//! - dry-run: every milter is asked and counted, nothing it says is applied.
//!
//! `layer`: the settings and the layer; `state`: a session's milters; `service`: the events;
//! `message`: the held message and the header and body changes.

mod layer;
mod message;
mod service;
mod state;

pub use layer::{
    DefaultAction, Discard, MilterLayer, MilterMetrics, MilterPolicy, MiltersConfig, Recheck,
};
pub use service::MilterService;
