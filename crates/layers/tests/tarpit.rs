//! Poll-level tests of the tarpit with `tower-test` and tokio's paused clock.

use std::future::{Ready, ready};
use std::time::Duration;

use attitude_layers::Rejection;
use attitude_layers::tarpit::TarpitLayer;
use tokio_test::{assert_pending, assert_ready_ok};
use tower_test::mock;

type Err = tower::BoxError;

fn delay(ms: &u64) -> Duration {
    Duration::from_millis(*ms)
}

fn refuse(_: u64, r: Rejection) -> Ready<Result<&'static str, Err>> {
    assert_eq!(r.layer, "tarpit");
    ready(Ok("over budget"))
}

#[tokio::test(start_paused = true)]
async fn holds_for_the_delay_within_the_budget() {
    let layer = TarpitLayer::new(1, delay as fn(&u64) -> Duration, refuse as fn(_, _) -> _);
    let (mut service, mut handle) = mock::spawn_layer::<u64, &'static str, _>(layer.clone());
    handle.allow(10);

    // No delay: straight through, no budget used.
    assert_ready_ok!(service.poll_ready());
    let quick = service.call(0);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("quick");
    assert_eq!(quick.await.unwrap(), "quick");

    // Held for 1 s: pending until the clock moves, one budget unit in use.
    assert_ready_ok!(service.poll_ready());
    let mut held = tokio_test::task::spawn(service.call(1000));
    assert_pending!(held.poll());
    assert_eq!(layer.holding(), 1);

    // The budget is 1: another request that should be held is refused instead.
    assert_ready_ok!(service.poll_ready());
    assert_eq!(service.call(500).await.unwrap(), "over budget");

    tokio::time::advance(Duration::from_millis(1001)).await;
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("slow");
    assert_eq!(held.await.unwrap(), "slow");
    assert_eq!(layer.holding(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_held_request_returns_its_budget() {
    let layer = TarpitLayer::new(1, delay as fn(&u64) -> Duration, refuse as fn(_, _) -> _);
    let (mut service, mut handle) = mock::spawn_layer::<u64, &'static str, _>(layer.clone());
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let mut held = tokio_test::task::spawn(service.call(1000));
    assert_pending!(held.poll());
    assert_eq!(layer.holding(), 1);
    drop(held);
    assert_eq!(layer.holding(), 0);
}
