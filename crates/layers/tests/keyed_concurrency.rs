//! Poll-level tests of the keyed concurrency limit with `tower-test`.

use std::future::{Ready, ready};

use attitude_layers::keyed_concurrency::KeyedConcurrencyLayer;
use attitude_layers::{LimitMetrics, Mode, Rejection};
use tokio_test::{assert_pending, assert_ready_ok};
use tower_test::mock;

/// poll_ready, then call (the mock insists on readiness before each call).
macro_rules! call {
    ($service:ident, $req:expr) => {{
        assert_ready_ok!($service.poll_ready());
        $service.call($req)
    }};
}

type Req = (&'static str, u32);

fn refuse(req: Req, r: Rejection) -> Ready<Result<String, tower::BoxError>> {
    assert_eq!(r.layer, "concurrency");
    ready(Ok(format!("refused {} by {}", req.0, r.rule)))
}

fn key(req: &Req) -> Option<&'static str> {
    (req.0 != "exempt").then_some(req.0)
}

#[tokio::test]
async fn limit_per_key_and_release_on_completion_and_drop() {
    let layer = KeyedConcurrencyLayer::new(
        "per-client",
        2,
        key as fn(&Req) -> _,
        refuse as fn(_, _) -> _,
    );
    let (mut service, mut handle) = mock::spawn_layer::<Req, String, _>(layer.clone());
    handle.allow(100);

    // Readiness is the inner service's.
    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(100);
    assert_ready_ok!(service.poll_ready());

    let a1 = call!(service, ("a", 1));
    let a2 = call!(service, ("a", 2));
    assert_eq!(layer.in_flight(&"a"), 2);
    // The third for "a" is refused at once; "b" and exempt requests are not affected.
    assert_eq!(
        call!(service, ("a", 3)).await.unwrap(),
        "refused a by per-client"
    );
    let b1 = call!(service, ("b", 1));
    let x = call!(service, ("exempt", 1));
    assert_eq!(layer.in_flight(&"b"), 1);

    // Completing one "a" request frees its permit.
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("a1".into());
    assert_eq!(a1.await.unwrap(), "a1");
    assert_eq!(layer.in_flight(&"a"), 1);
    let a4 = call!(service, ("a", 4));
    assert_eq!(layer.in_flight(&"a"), 2);

    // Dropping a pending future frees its permit too (a session that ends abruptly).
    drop(a2);
    assert_eq!(layer.in_flight(&"a"), 1);
    drop(a4);
    drop(b1);
    drop(x);
    assert_eq!(layer.in_flight(&"a"), 0);
    assert_eq!(layer.in_flight(&"b"), 0);
}

#[tokio::test]
async fn errors_release_the_permit_and_pass_through() {
    let layer = KeyedConcurrencyLayer::new("one", 1, key as fn(&Req) -> _, refuse as fn(_, _) -> _);
    let (mut service, mut handle) = mock::spawn_layer::<Req, String, _>(layer.clone());
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let f = call!(service, ("a", 1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("backend gone");
    assert!(f.await.is_err());
    assert_eq!(layer.in_flight(&"a"), 0);
}

#[tokio::test]
async fn dry_run_counts_but_lets_through() {
    let layer = KeyedConcurrencyLayer::new("dry", 1, key as fn(&Req) -> _, refuse as fn(_, _) -> _)
        .mode(Mode::DryRun)
        .metrics(LimitMetrics::noop());
    let (mut service, mut handle) = mock::spawn_layer::<Req, String, _>(layer.clone());
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let _a1 = call!(service, ("a", 1));
    let a2 = call!(service, ("a", 2));
    assert_eq!(layer.in_flight(&"a"), 2);
    let (_, r1) = handle.next_request().await.unwrap();
    let (_, r2) = handle.next_request().await.unwrap();
    r1.send_response("one".into());
    r2.send_response("two".into());
    assert_eq!(a2.await.unwrap(), "two");
}
