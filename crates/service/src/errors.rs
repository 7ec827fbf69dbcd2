//! The one place where foreign errors become SMTP replies.

use attitude_codec::{EnhancedStatus, Reply};

use crate::BoxError;

/// When to try again, for humans in reply text: "1 second", "40 seconds", "3 minutes".
pub fn retry_hint(wait: Option<std::time::Duration>) -> String {
    let secs = wait.map_or(1, |d| d.as_secs().max(1));
    match secs {
        1 => "1 second".into(),
        2..120 => format!("{secs} seconds"),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}

/// Maps an error out of the command stack to the reply the client gets. Every error is a
/// transient failure: the client keeps the message and tries again.
pub fn error_reply(error: &BoxError) -> Reply {
    if error.is::<tower::timeout::error::Elapsed>() {
        return Reply::new(
            451,
            EnhancedStatus::new(4, 4, 2),
            "Timeout; try again later",
        );
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Reply::new(
            421,
            EnhancedStatus::new(4, 3, 2),
            "Overloaded; try again later",
        );
    }
    if error.is::<std::io::Error>() {
        return Reply::new(
            451,
            EnhancedStatus::new(4, 3, 0),
            "Local I/O error; try again later",
        );
    }
    Reply::new(
        451,
        EnhancedStatus::new(4, 3, 0),
        "Local error; try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_well() {
        use std::time::Duration;
        assert_eq!(retry_hint(Some(Duration::from_millis(300))), "1 second");
        assert_eq!(retry_hint(Some(Duration::from_secs(45))), "45 seconds");
        assert_eq!(retry_hint(Some(Duration::from_secs(600))), "10 minutes");
    }

    #[test]
    fn foreign_errors_are_transient_replies() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(error_reply(&elapsed).code(), 451);
        let overloaded: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(error_reply(&overloaded).code(), 421);
        let other: BoxError = "boom".into();
        assert!(error_reply(&other).is_transient());
    }
}
