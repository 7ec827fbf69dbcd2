//! The pool in process, against scripted backends (attitude-test-support's `session` harness)
//! with a paused clock: checkout reuses a pooled connection, a dropped lease closes its
//! connection, an idle connection expires, a failover checkout skips what was tried, p2c
//! balances by transactions in flight and weight, outlier detection ejects a backend that keeps
//! failing and lets it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attitude_balance::{
    BackendSpec, CheckoutError, ClientIdentity, FailureKind, IdentityMode, Lease, Pool,
};
use attitude_codec::Command;
use attitude_test_support::session::{Backends, Script, pool_config, specs};

const A: &str = "198.51.100.1:25";
const B: &str = "198.51.100.2:25";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

fn client() -> ClientIdentity {
    ClientIdentity {
        addr: "192.0.2.7:40000".parse().unwrap(),
        local: "192.0.2.254:25".parse().unwrap(),
        helo: Some("client.test".into()),
        esmtp: true,
        login: None,
    }
}

fn pool(backends: &Backends, addrs: &[SocketAddr]) -> Pool {
    let pool = Pool::with_dial(pool_config(), None, Arc::new(backends.clone()));
    pool.set_source("static", specs(addrs));
    pool.start();
    pool
}

/// A connection that answers `n` NOOPs (one per transaction a test pretends to run).
fn serves(n: usize) -> Script {
    (0..n).fold(Script::smtp(&["PIPELINING"]), |s, _| {
        s.expect("NOOP", "250 ok")
    })
}

async fn noop(lease: &mut Lease) {
    let reply = lease
        .conn()
        .command(&Command::Noop, Duration::from_secs(5), "NOOP")
        .await
        .unwrap();
    assert_eq!(reply.code(), 250);
}

fn backend(pool: &Pool, a: SocketAddr) -> Arc<attitude_balance::Backend> {
    pool.backends().into_iter().find(|b| b.addr() == a).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_released_connection_serves_the_next_checkout() {
    let backends = Backends::new();
    backends.script(addr(A), serves(2));
    let pool = pool(&backends, &[addr(A)]);
    let mut first = pool.checkout(&client(), &[]).await.unwrap();
    assert!(!first.reused());
    noop(&mut first).await;
    first.transaction_done();
    first.release();
    let mut second = pool.checkout(&client(), &[]).await.unwrap();
    assert!(second.reused(), "the idle connection, not a new one");
    noop(&mut second).await;
    assert_eq!(backends.dials(addr(A)), 1);
    backends.assert_scripted();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_lease_closes_its_connection() {
    let backends = Backends::new();
    backends.script(addr(A), serves(1));
    backends.script(addr(A), serves(1));
    let pool = pool(&backends, &[addr(A)]);
    let mut lease = pool.checkout(&client(), &[]).await.unwrap();
    noop(&mut lease).await;
    // Dropping a lease aborts the transaction: the connection is never pooled.
    drop(lease);
    let mut again = pool.checkout(&client(), &[]).await.unwrap();
    assert!(!again.reused());
    noop(&mut again).await;
    assert_eq!(backends.dials(addr(A)), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_expires_after_idle_timeout() {
    let backends = Backends::new();
    backends.script(addr(A), serves(1));
    backends.script(addr(A), serves(1));
    let pool = pool(&backends, &[addr(A)]);
    let idle_timeout = pool.config().idle_timeout;
    let mut lease = pool.checkout(&client(), &[]).await.unwrap();
    noop(&mut lease).await;
    lease.release();
    tokio::time::sleep(idle_timeout + Duration::from_secs(2)).await;
    let lease = pool.checkout(&client(), &[]).await.unwrap();
    assert!(!lease.reused(), "expired: a new connection");
    // The expired one was closed politely.
    assert!(backends.lines(addr(A)).contains(&"QUIT".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_failover_checkout_takes_a_backend_not_yet_tried() {
    let backends = Backends::new();
    backends.script(addr(B), serves(0));
    let pool = pool(&backends, &[addr(A), addr(B)]);
    let lease = pool.checkout(&client(), &[addr(A)]).await.unwrap();
    assert_eq!(lease.addr(), addr(B));
    let none = pool.checkout(&client(), &[addr(A), addr(B)]).await;
    assert!(matches!(none, Err(CheckoutError::NoBackend)), "{none:?}");
    // A backend that refuses the connection is reported as such.
    let refused = pool.checkout(&client(), &[addr(B)]).await;
    assert!(
        matches!(refused, Err(CheckoutError::Backend { addr: a, .. }) if a == addr(A)),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_spreads_transactions_in_flight_by_weight() {
    let backends = Backends::new();
    for _ in 0..12 {
        backends.script(addr(A), serves(0));
        backends.script(addr(B), serves(0));
    }
    let pool = Pool::with_dial(pool_config(), None, Arc::new(backends.clone()));
    let spec = |a: &str, weight| BackendSpec {
        addr: addr(a),
        weight,
        identity: IdentityMode::None,
    };
    pool.set_source("static", vec![spec(A, 3), spec(B, 1)]);
    pool.start();
    // Every lease is held: the load is what is in flight, ÷ weight.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(pool.checkout(&client(), &[]).await.unwrap());
    }
    let on_a = held.iter().filter(|l| l.addr() == addr(A)).count();
    assert!(
        (8..=10).contains(&on_a),
        "{on_a} of 12 on the weight-3 backend"
    );
    assert_eq!(backend(&pool, addr(A)).in_flight(), on_a);
    // Parked leases stop counting as in flight.
    for lease in &mut held {
        lease.park();
    }
    assert_eq!(backend(&pool, addr(A)).in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_keeps_failing_is_ejected_then_let_back() {
    let backends = Backends::new();
    for _ in 0..4 {
        backends.script(addr(A), serves(0));
    }
    backends.script(addr(B), serves(0));
    let mut config = pool_config();
    config.outlier.consecutive_failures = 3;
    config.outlier.max_ejected_percent = 50;
    config.outlier.base_ejection = Duration::from_secs(30);
    let pool = Pool::with_dial(config, None, Arc::new(backends.clone()));
    pool.set_source("static", specs(&[addr(A), addr(B)]));
    pool.start();
    for _ in 0..3 {
        let lease = pool.checkout(&client(), &[addr(B)]).await.unwrap();
        lease.failure(FailureKind::Timeout);
    }
    assert!(backend(&pool, addr(A)).is_ejected());
    // While A is out, every checkout goes to B.
    let lease = pool.checkout(&client(), &[]).await.unwrap();
    assert_eq!(lease.addr(), addr(B));
    drop(lease);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        !backend(&pool, addr(A)).is_ejected(),
        "back after its ejection time"
    );
    assert!(pool.available());
}

#[tokio::test(start_paused = true)]
async fn at_the_connection_limit_a_checkout_waits_for_a_released_connection_or_gives_up() {
    let backends = Backends::new();
    backends.script(addr(A), serves(2));
    let mut config = pool_config();
    config.max_connections = 1;
    config.queue_timeout = Duration::from_secs(30);
    let pool = Pool::with_dial(config, None, Arc::new(backends.clone()));
    pool.set_source("static", specs(&[addr(A)]));
    pool.start();
    let mut first = pool.checkout(&client(), &[]).await.unwrap();
    noop(&mut first).await;
    // Nobody gives the slot back: Busy once the queue timeout is over.
    let started = tokio::time::Instant::now();
    let busy = pool.checkout(&client(), &[]).await;
    assert!(matches!(busy, Err(CheckoutError::Busy)), "{busy:?}");
    assert!(started.elapsed() >= Duration::from_secs(30));
    // A waiter gets the connection the moment it is released.
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&client(), &[]).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    first.transaction_done();
    first.release();
    let mut second = waiter.await.unwrap().unwrap();
    assert!(second.reused());
    noop(&mut second).await;
    assert_eq!(backends.dials(addr(A)), 1);
}
