//! `[[rates]]`: message and recipient rates, as generic rate-limit layers in the command stack
//! (between the protocol layer and the relay). Over the rate: `450 4.7.1` (or 451) with a hint
//! of when to try again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use attitude_codec::{Command, EnhancedStatus, Reply};
use attitude_layers::rate_limit::RateLimitLayer;
use attitude_layers::{LimitMetrics, Rejection};
use attitude_service::address::domain_of;
use attitude_service::errors::retry_hint;
use attitude_service::{BoxCommand, BoxError, Event, Request};
use governor::Quota;
use tower::Layer;

use crate::config::{RateCount, RateKey, RateRule};
use crate::keys::ClientKey;
use crate::stack::{CommandLayer, every_minute};

fn key_of(rule: &RateRule, client: &ClientKey, req: &Request) -> Option<String> {
    let (mail, rcpt) = match (&req.event, rule.count) {
        (Event::Command(Command::Mail(mail)), RateCount::Messages) => (&mail.address, None),
        (Event::Command(Command::Rcpt(rcpt)), RateCount::Recipients) => (
            &req.session.transaction.as_ref()?.mail.address,
            Some(&rcpt.address),
        ),
        _ => return None,
    };
    match rule.key {
        RateKey::Client => client.key(req.session.client.ip()).map(|ip| ip.to_string()),
        RateKey::Sender => Some(mail.to_ascii_lowercase()).filter(|s| !s.is_empty()),
        RateKey::SenderDomain => domain_of(mail),
        RateKey::AuthUser => req.session.auth.clone(),
        RateKey::RcptDomain => rcpt.and_then(|r| domain_of(r)),
    }
}

fn key_label(key: RateKey) -> &'static str {
    match key {
        RateKey::Client => "client",
        RateKey::Sender => "sender",
        RateKey::SenderDomain => "sender-domain",
        RateKey::AuthUser => "auth-user",
        RateKey::RcptDomain => "rcpt-domain",
    }
}

/// One layer per rule.
pub fn layers(
    rules: &[RateRule],
    client: &ClientKey,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<CommandLayer> {
    rules
        .iter()
        .map(|rule| {
            let per_cell = rule.per / rule.limit;
            let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
                .expect("non-zero period")
                .allow_burst(
                    NonZeroU32::new(rule.burst.unwrap_or(rule.limit)).expect("checked > 0"),
                );
            let what = match rule.count {
                RateCount::Messages => "Message",
                RateCount::Recipients => "Recipient",
            };
            let code = rule.code;
            let keyed = rule.clone();
            let client = client.clone();
            let layer = RateLimitLayer::new(
                &rule.name,
                quota,
                rule.max_keys,
                move |req: &Request| key_of(&keyed, &client, req),
                move |_req: Request, why: Rejection| {
                    let reply = Reply::new(
                        code,
                        EnhancedStatus::new(4, 7, 1),
                        format!(
                            "{what} rate limit exceeded ({}); try again in {}",
                            why.rule,
                            retry_hint(why.retry_after)
                        ),
                    );
                    std::future::ready(Ok::<_, BoxError>(reply))
                },
            )
            .mode(rule.mode.into())
            .metrics(LimitMetrics::register(
                "attitude_limit",
                "rate",
                &rule.name,
                key_label(rule.key),
            ));
            let housekeeping = layer.clone();
            every_minute(stop, move || housekeeping.housekeeping());
            let apply: CommandLayer =
                Arc::new(move |inner: BoxCommand| BoxCommand::new(layer.layer(inner)));
            apply
        })
        .collect()
}
