//! The catalogue of attitude's own fixed replies: every reply that attitude writes itself with
//! a fixed text is made here, once, so that two places never say the same thing two ways.
//! (The protocol layer's answers to single commands, and replies that carry a backend's or a
//! policy's own text, stay where they are decided.)

use std::time::Duration;

use attitude_codec::{EnhancedStatus, Reply};

use crate::errors::retry_hint;

const fn status(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

// ---- Session (driver and connection stack) ------------------------------------------------

/// `421 4.3.2`: attitude is draining (SIGTERM); to sessions between transactions and to new
/// clients while the listener still accepts.
pub fn shutting_down() -> Reply {
    Reply::new(
        421,
        status(4, 3, 2),
        "Service shutting down; try again later",
    )
}

/// `421 4.3.2`: every backend is down, said at the greeting.
pub fn no_mail_server() -> Reply {
    Reply::new(
        421,
        status(4, 3, 2),
        "No mail server available; try again later",
    )
}

/// `421 4.4.2`: no complete command in time.
pub fn command_timeout() -> Reply {
    Reply::new(
        421,
        status(4, 4, 2),
        "Timeout waiting for a command; closing connection",
    )
}

/// `421 4.4.2`: DATA went silent, or slower than the minimum data rate.
pub fn data_timeout() -> Reply {
    Reply::new(
        421,
        status(4, 4, 2),
        "Timeout or data rate too low; closing connection",
    )
}

/// `421 4.7.0`: the session made `max_errors` errors, or the tarpit's budget is spent.
pub fn too_many_errors() -> Reply {
    Reply::new(421, status(4, 7, 0), "Too many errors; closing connection")
}

/// `421 4.7.0`: past the junk-command limit (commands that move no transaction forward).
pub fn too_many_junk_commands() -> Reply {
    Reply::new(
        421,
        status(4, 7, 0),
        "Too many commands that do not send mail; closing connection",
    )
}

/// `554 5.5.1`: bytes pipelined behind STARTTLS (CVE-2011-0411); the session is closed.
pub fn starttls_injection() -> Reply {
    Reply::new(
        554,
        status(5, 5, 1),
        "Commands pipelined after STARTTLS; closing connection",
    )
}

/// `421 4.3.2`: the global session cap.
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        status(4, 3, 2),
        "Too many connections; try again later",
    )
}

/// `421 4.7.0`: the client's network holds its per-client session limit.
pub fn too_many_connections_from_network() -> Reply {
    Reply::new(
        421,
        status(4, 7, 0),
        "Too many connections from your network; try again later",
    )
}

/// `421 4.7.0`: the client's network opens sessions faster than its connection rate.
pub fn connection_rate_exceeded(retry_after: Option<Duration>) -> Reply {
    Reply::new(
        421,
        status(4, 7, 0),
        format!(
            "Connection rate limit exceeded; try again in {}",
            retry_hint(retry_after)
        ),
    )
}

/// `250 2.0.0`: a BDAT chunk that is not the last was read (the message's verdict is the
/// backend's, at `BDAT ... LAST`).
pub fn chunk_received(octets: u64) -> Reply {
    Reply::new(250, status(2, 0, 0), format!("{octets} octets received"))
}

// ---- Command stack ------------------------------------------------------------------------

/// `450 4.7.1` (or 451): a `[[rates]]` rule; `what` is "Message" or "Recipient".
pub fn rate_limited(code: u16, what: &str, rule: &str, retry_after: Option<Duration>) -> Reply {
    Reply::new(
        code,
        status(4, 7, 1),
        format!(
            "{what} rate limit exceeded ({rule}); try again in {}",
            retry_hint(retry_after)
        ),
    )
}

/// `503 5.5.1`.
pub fn bad_sequence() -> Reply {
    Reply::new(503, status(5, 5, 1), "Bad sequence of commands")
}

// ---- Relay --------------------------------------------------------------------------------

/// `250 2.0.0 OK`: a step the relay took (RSET, a DATA chunk written).
pub fn ok() -> Reply {
    Reply::new(250, status(2, 0, 0), "OK")
}

/// `250 2.1.0`: MAIL, answered at once (it goes to the backend with the first RCPT).
pub fn sender_ok() -> Reply {
    Reply::new(250, status(2, 1, 0), "Sender OK")
}

/// `354`: attitude's own go-ahead for DATA (the backend's is read before content goes out).
pub fn start_data() -> Reply {
    Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
}

/// `221 2.0.0 Bye`.
pub fn bye() -> Reply {
    Reply::new(221, status(2, 0, 0), "Bye")
}

/// `451 4.4.2`: the backend was lost `during` a transaction; the message is not accepted.
pub fn backend_lost(during: &str) -> Reply {
    Reply::new(
        451,
        status(4, 4, 2),
        format!("Connection to backend lost {during}; message not accepted, try again later"),
    )
}

/// `451 4.4.4`: the session was offered an extension the transaction uses, and no usable
/// backend offers it any more.
pub fn no_backend_offers(needs: attitude_codec::Extensions) -> Reply {
    Reply::new(
        451,
        status(4, 4, 4),
        format!("No mail server offers {needs} right now; try again later"),
    )
}

/// `451 4.3.1`: the messages held for checking (content policies, scanners, milters) have used
/// the byte budget.
pub fn over_budget() -> Reply {
    Reply::new(
        451,
        status(4, 3, 1),
        "Too many messages being checked; try again later",
    )
}

/// `552 5.3.4`: the message is larger than the limit (the session's or its route's).
pub fn too_big(limit: u64) -> Reply {
    Reply::new(
        552,
        status(5, 3, 4),
        format!("Message size exceeds fixed limit of {limit} octets"),
    )
}

/// `550 5.1.2`: no route for the recipient's domain, and unrouted domains are refused.
pub fn unknown_domain() -> Reply {
    Reply::new(550, status(5, 1, 2), "Recipient domain not served here")
}

/// `452 4.5.3`: the recipient goes to other mail servers than this transaction's first
/// recipients (RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction).
pub fn other_route() -> Reply {
    Reply::new(
        452,
        status(4, 5, 3),
        "Too many recipients for this transaction: send this one in another",
    )
}

/// `451 4.4.1`: no backend could take the transaction.
pub fn no_backend() -> Reply {
    Reply::new(
        451,
        status(4, 4, 1),
        "No backend mail server available; try again later",
    )
}

/// `451 4.4.5`: every backend is at its connection limit.
pub fn backends_busy() -> Reply {
    Reply::new(451, status(4, 4, 5), "Mail servers busy; try again later")
}

/// `451 4.7.0`: the backend connection that carried the session's authentication is gone.
pub fn auth_lost() -> Reply {
    Reply::new(
        451,
        status(4, 7, 0),
        "Authenticated backend session lost; reconnect and authenticate again",
    )
}

/// `501 5.5.2`: an AUTH answer over the line limit; the exchange is cancelled (RFC 4954 §4).
pub fn auth_line_too_long() -> Reply {
    Reply::new(
        501,
        status(5, 5, 2),
        "Authentication line too long; exchange cancelled",
    )
}

/// `454 4.7.0`: AUTH could not be relayed.
pub fn temporary_auth_failure() -> Reply {
    Reply::new(
        454,
        status(4, 7, 0),
        "Temporary authentication failure; try again later",
    )
}
