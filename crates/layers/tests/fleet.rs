//! The keyed layers over a shared store, in process: a scripted store (what it answers, and
//! every call it gets) instead of Redis, whose own behaviour `attitude-state`'s tests cover
//! against a real server. What is checked here is the layers' side: a key the store refused is
//! refused locally without asking again, a store that fails leaves the decision to the
//! process's own state, leases are renewed while held and given back at the end.

use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attitude_layers::fleet::{Fleet, FleetError, FleetFuture, FleetStore};
use attitude_layers::keyed_concurrency::{
    KeyedConcurrencyLayer, KeyedConcurrencyState, LeaseTerms,
};
use attitude_layers::rate_limit::{RateLimitLayer, RateLimitState};
use attitude_layers::{LimitMetrics, Rejection, TokioClock};
use governor::Quota;
use tower::{Service, ServiceExt};

/// What the scripted store answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Allow,
    Refuse,
    Fail,
}

#[derive(Debug)]
struct Scripted {
    answer: Mutex<Answer>,
    calls: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(answer),
            calls: Mutex::default(),
        })
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) -> Answer {
        self.calls.lock().unwrap().push(call);
        *self.answer.lock().unwrap()
    }
}

impl FleetStore for Scripted {
    fn gcra(
        &self,
        key: String,
        _: Duration,
        _: u32,
        want: u32,
    ) -> FleetFuture<Result<u32, Duration>> {
        let answer = self.record(format!("gcra {key} {want}"));
        Box::pin(async move {
            match answer {
                Answer::Allow => Ok(Ok(want)),
                Answer::Refuse => Ok(Err(Duration::from_secs(10))),
                Answer::Fail => Err(FleetError::Timeout),
            }
        })
    }

    fn acquire(&self, key: String, holder: String, _: u32, _: Duration) -> FleetFuture<bool> {
        let answer = self.record(format!("acquire {key} {holder}"));
        Box::pin(async move {
            match answer {
                Answer::Allow => Ok(true),
                Answer::Refuse => Ok(false),
                Answer::Fail => Err(FleetError::Open),
            }
        })
    }

    fn renew(&self, leases: Vec<(String, String)>, _: Duration) -> FleetFuture<()> {
        self.record(format!("renew {}", leases.len()));
        Box::pin(async { Ok(()) })
    }

    fn release(&self, leases: Vec<(String, String)>) -> FleetFuture<()> {
        for (key, holder) in leases {
            self.record(format!("release {key} {holder}"));
        }
        Box::pin(async { Ok(()) })
    }
}

type Req = &'static str;

fn key(req: &Req) -> Option<String> {
    Some(req.to_string())
}

fn refuse(req: Req, why: Rejection) -> Ready<Result<String, tower::BoxError>> {
    ready(Ok(format!("refused {req} ({:?})", why.retry_after)))
}

fn echo() -> impl Service<Req, Response = String, Error = tower::BoxError, Future: Send> + Send {
    tower::service_fn(|req: Req| ready(Ok::<_, tower::BoxError>(format!("served {req}"))))
}

#[tokio::test(start_paused = true)]
async fn a_refused_key_is_refused_locally_until_its_next_cell_and_a_failing_store_leaves_it_to_the_process()
 {
    let store = Scripted::new(Answer::Refuse);
    let quota = Quota::per_minute(NonZeroU32::new(2).unwrap()); // burst 2
    let state = RateLimitState::<String, _>::with_clock(
        "msgs",
        quota,
        100,
        LimitMetrics::noop(),
        TokioClock,
    )
    .fleet(Fleet::display(store.clone()));
    let layer = RateLimitLayer::with_state(state, key as fn(&Req) -> _, refuse as fn(_, _) -> _);
    let mut service = tower::ServiceBuilder::new().layer(layer).service(echo());

    let r = service.ready().await.unwrap().call("a").await.unwrap();
    assert_eq!(r, "refused a (Some(10s))", "the store's verdict and wait");
    let r = service.ready().await.unwrap().call("a").await.unwrap();
    assert!(r.starts_with("refused a"), "{r}");
    assert_eq!(
        store.calls(),
        ["gcra msgs:a 1"],
        "the second refusal cost no round trip"
    );

    // Another key asks the store; once it fails, the process's own GCRA decides (burst 2).
    store.set(Answer::Fail);
    for _ in 0..2 {
        assert_eq!(
            service.ready().await.unwrap().call("b").await.unwrap(),
            "served b"
        );
    }
    let r = service.ready().await.unwrap().call("b").await.unwrap();
    assert!(r.starts_with("refused b"), "over the local burst: {r}");

    // Once the wait the store named is over, "a" asks again.
    tokio::time::advance(Duration::from_secs(11)).await;
    store.set(Answer::Allow);
    assert_eq!(
        service.ready().await.unwrap().call("a").await.unwrap(),
        "served a"
    );
    assert_eq!(
        store
            .calls()
            .iter()
            .filter(|c| *c == "gcra msgs:a 1")
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn leases_are_taken_renewed_while_held_given_back_and_refusals_remembered() {
    let store = Scripted::new(Answer::Allow);
    let terms = LeaseTerms {
        ttl: Duration::from_secs(3),
        refusal_memory: Duration::from_secs(1),
        replica: "r1".into(),
    };
    let state = KeyedConcurrencyState::<String>::new("per_client", LimitMetrics::noop())
        .fleet(Fleet::display(store.clone()), terms);
    let layer = KeyedConcurrencyLayer::with_state(
        state.clone(),
        2,
        key as fn(&Req) -> _,
        refuse as fn(_, _) -> _,
    );
    // A slow inner service: the permit (and the lease) lives as long as its response.
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<Req, String, _>(layer);
    handle.allow(10);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let held = tokio::spawn(service.call("a"));
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req, "a");
    assert_eq!(store.calls(), ["acquire per_client:a r1:0"]);
    assert_eq!(state.in_flight(&"a".to_string()), 1);
    // Held for a while: renewed every ttl / 3.
    tokio::time::advance(Duration::from_millis(2100)).await;
    tokio::task::yield_now().await;
    let renewals = store
        .calls()
        .iter()
        .filter(|c| c.starts_with("renew 1"))
        .count();
    assert!(renewals >= 1, "{:?}", store.calls());
    respond.send_response("done".into());
    assert_eq!(held.await.unwrap().unwrap(), "done");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        store
            .calls()
            .contains(&"release per_client:a r1:0".to_string()),
        "{:?}",
        store.calls()
    );
    assert_eq!(state.in_flight(&"a".to_string()), 0);

    // Refused by the store: refused, and remembered for refusal_memory (no second round trip).
    store.set(Answer::Refuse);
    tokio_test::assert_ready_ok!(service.poll_ready());
    assert!(service.call("b").await.unwrap().starts_with("refused b"));
    tokio_test::assert_ready_ok!(service.poll_ready());
    assert!(service.call("b").await.unwrap().starts_with("refused b"));
    let asked = |k: &str| {
        store
            .calls()
            .iter()
            .filter(|c| c.starts_with(&format!("acquire per_client:{k}")))
            .count()
    };
    assert_eq!(asked("b"), 1);
    assert_eq!(
        state.in_flight(&"b".to_string()),
        0,
        "a refusal holds nothing"
    );
    // The store fails: the process's own count admits.
    store.set(Answer::Fail);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let c = tokio::spawn(service.call("c"));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response("served c".into());
    assert_eq!(c.await.unwrap().unwrap(), "served c");
}

#[tokio::test(start_paused = true)]
async fn a_rule_far_above_what_a_key_sends_takes_its_cells_in_batches() {
    let store = Scripted::new(Answer::Allow);
    // Burst 1000: batches of 10 cells, spent locally.
    let quota = Quota::per_minute(NonZeroU32::new(1000).unwrap());
    let state = RateLimitState::<String>::new("msgs", quota, 100, LimitMetrics::noop())
        .fleet(Fleet::display(store.clone()));
    let layer = RateLimitLayer::with_state(state, key as fn(&Req) -> _, refuse as fn(_, _) -> _);
    let mut service = tower::ServiceBuilder::new().layer(layer).service(echo());
    for _ in 0..25 {
        assert_eq!(
            service.ready().await.unwrap().call("a").await.unwrap(),
            "served a"
        );
    }
    assert_eq!(
        store.calls(),
        ["gcra msgs:a 10"; 3],
        "25 requests, 3 round trips"
    );
}
