//! The throttle delays by cost and refuses nothing; each service instance has its own budget.
//! Tokio's clock is paused: the throttle's budget runs on it too (`TokioClock`), so the delays are
//! exact and cost no wall-clock time.

use std::time::Duration;

use tokio::time::Instant;

use attitude_layers::throttle::ThrottleLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

type Err = tower::BoxError;
type TestThrottle = ThrottleLayer<u8, fn(&u32) -> Option<u8>, fn(&u32) -> u32>;

fn svc(layer: &TestThrottle) -> impl Service<u32, Response = u32, Error = Err> {
    layer.layer(service_fn(|n: u32| async move { Ok::<_, Err>(n) }))
}

#[tokio::test(start_paused = true)]
async fn stretches_a_transfer_to_the_rate() {
    // 1,000,000 units/s per instance, burst 100,000: 600,000 units take about 0.5 s.
    let layer: TestThrottle = ThrottleLayer::new(1_000_000, 0, 100_000, |_| None, |n| *n);
    let mut one = svc(&layer);
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(
            one.ready().await.unwrap().call(20_000).await.unwrap(),
            20_000
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(520),
        "{took:?}"
    );

    // A request larger than the burst is taken in pieces, not refused.
    let started = Instant::now();
    let mut two = svc(&layer);
    assert_eq!(
        two.ready().await.unwrap().call(300_000).await.unwrap(),
        300_000
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_budget_is_shared_between_instances() {
    let layer: TestThrottle = ThrottleLayer::new(0, 1_000_000, 100_000, |_| Some(1), |n| *n);
    let started = Instant::now();
    let (mut a, mut b) = (svc(&layer), svc(&layer));
    for _ in 0..15 {
        a.ready().await.unwrap().call(20_000).await.unwrap();
        b.ready().await.unwrap().call(20_000).await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(520),
        "{took:?}"
    );
    // Free requests never wait.
    let started = Instant::now();
    a.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}
