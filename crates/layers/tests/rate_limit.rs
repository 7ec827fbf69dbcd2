//! Poll-level tests of the keyed rate limit with `tower-test` and governor's fake clock, and the
//! bound on tracked keys.

use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::time::Duration;

use attitude_layers::rate_limit::RateLimitLayer;
use attitude_layers::{Mode, Rejection};
use governor::Quota;
use governor::clock::FakeRelativeClock;
use tokio_test::assert_ready_ok;
use tower::{Service, ServiceExt, service_fn};
use tower_test::mock;

/// poll_ready, then call (the mock insists on readiness before each call).
macro_rules! call {
    ($service:ident, $req:expr) => {{
        assert_ready_ok!($service.poll_ready());
        $service.call($req)
    }};
}

type Err = tower::BoxError;

fn refuse(_: u32, r: Rejection) -> Ready<Result<String, Err>> {
    assert_eq!(r.layer, "rate");
    ready(Ok(format!(
        "retry after {}s",
        r.retry_after.unwrap().as_secs()
    )))
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

fn key(req: &u32) -> Option<u32> {
    (*req != 0).then_some(*req % 100)
}

#[tokio::test]
async fn over_the_rate_is_refused_with_retry_after_and_recovers() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::with_clock(
        "msgs",
        per_minute(2),
        1000,
        key as fn(&u32) -> _,
        refuse as fn(_, _) -> _,
        clock.clone(),
    );
    let (mut service, mut handle) = mock::spawn_layer::<u32, String, _>(layer);
    handle.allow(100);
    assert_ready_ok!(service.poll_ready());
    // Burst of 2 (the per-minute quota's default burst) for key 1, then refused.
    for _ in 0..2 {
        let f = call!(service, 1);
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response("ok".into());
        assert_eq!(f.await.unwrap(), "ok");
    }
    assert_eq!(call!(service, 101).await.unwrap(), "retry after 30s");
    // Another key and exempt requests are not affected.
    let f = call!(service, 2);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("other".into());
    assert_eq!(f.await.unwrap(), "other");
    let f = call!(service, 0);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("exempt".into());
    assert_eq!(f.await.unwrap(), "exempt");
    // Half a minute later one more is allowed.
    clock.advance(Duration::from_secs(30));
    let f = call!(service, 1);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("later".into());
    assert_eq!(f.await.unwrap(), "later");
}

#[tokio::test]
async fn dry_run_lets_everything_through() {
    let layer = RateLimitLayer::new(
        "dry",
        per_minute(1),
        100,
        key as fn(&u32) -> _,
        refuse as fn(_, _) -> _,
    )
    .mode(Mode::DryRun);
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|r: u32| async move {
            Ok::<_, Err>(format!("served {r}"))
        }));
    for _ in 0..5 {
        let reply = service.ready().await.unwrap().call(7).await.unwrap();
        assert_eq!(reply, "served 7");
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_bound() {
    const MAX_KEYS: usize = 10_000;
    let layer = RateLimitLayer::new(
        "flood",
        per_minute(10),
        MAX_KEYS,
        |r: &u64| Some(*r),
        |_: u64, _: Rejection| ready(Ok::<_, Err>(())),
    );
    let mut service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|_: u64| ready(Ok::<_, Err>(()))));
    let before = rss_kib();
    let mut peak_keys = 0;
    for key in 0..1_000_000u64 {
        service.ready().await.unwrap().call(key).await.unwrap();
        if key % 10_000 == 0 {
            peak_keys = peak_keys.max(layer.tracked_keys());
        }
    }
    let grown = rss_kib().saturating_sub(before);
    // The bound is checked every 1024 requests.
    assert!(peak_keys <= MAX_KEYS + 1024, "tracked {peak_keys} keys");
    assert!(layer.tracked_keys() <= MAX_KEYS + 1024);
    // A million keys kept would take tens of MiB; the bound keeps it to a few.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
}
