//! The store's operations against a real `redis-server`: GCRA and leases as the layers use
//! them, and a million distinct client keys that leave Redis's memory bounded by the expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attitude_layers::fleet::{FleetError, FleetStore};
use attitude_state::{BreakerConfig, Redis, StateConfig};
use attitude_test_support::RedisServer;

fn config(redis: &RedisServer, timeout: Duration) -> StateConfig {
    StateConfig {
        url: redis.url(),
        password: None,
        username: None,
        sentinels: Vec::new(),
        master_name: "mymaster".into(),
        ca_file: None,
        key_prefix: "attitude:".into(),
        timeout,
        connect_timeout: Duration::from_secs(2),
        breaker: BreakerConfig::default(),
    }
}

async fn store(redis: &RedisServer, timeout: Duration) -> Arc<dyn FleetStore> {
    Redis::connect(config(redis, timeout))
        .await
        .expect("connect")
        .fleet_store()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_gives_the_burst_then_names_the_wait_and_its_key_expires() {
    let redis = RedisServer::start();
    let store = store(&redis, Duration::from_secs(1)).await;
    let interval = Duration::from_millis(500);
    assert_eq!(
        store.gcra("r:k".into(), interval, 3, 1).await.unwrap(),
        Ok(1)
    );
    assert_eq!(
        store.gcra("r:k".into(), interval, 3, 5).await.unwrap(),
        Ok(2),
        "the rest of the burst, not more"
    );
    let wait = store
        .gcra("r:k".into(), interval, 3, 1)
        .await
        .unwrap()
        .expect_err("refused");
    assert!(
        wait > Duration::from_millis(400) && wait <= interval,
        "{wait:?}"
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "attitude:{rate:r:k}"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 1000 && ttl <= 1500,
        "expires when back at full burst: {ttl} ms"
    );
    tokio::time::sleep(wait).await;
    assert_eq!(
        store.gcra("r:k".into(), interval, 3, 2).await.unwrap(),
        Ok(1),
        "the next cell"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_limited_expire_unless_renewed_and_are_given_back() {
    let redis = RedisServer::start();
    let store = store(&redis, Duration::from_secs(1)).await;
    let ttl = Duration::from_millis(600);
    assert!(
        store
            .acquire("l:c".into(), "a:1".into(), 2, ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire("l:c".into(), "b:1".into(), 2, ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire("l:c".into(), "b:2".into(), 2, ttl)
            .await
            .unwrap(),
        "two held"
    );
    store
        .release(vec![("l:c".into(), "b:1".into())])
        .await
        .unwrap();
    assert!(
        store
            .acquire("l:c".into(), "b:2".into(), 2, ttl)
            .await
            .unwrap(),
        "one given back"
    );
    // b renews its lease, a (a dead replica) does not: a's expires, b's does not.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        store
            .renew(vec![("l:c".into(), "b:2".into())], ttl)
            .await
            .unwrap();
    }
    assert!(
        store
            .acquire("l:c".into(), "c:1".into(), 2, ttl)
            .await
            .unwrap(),
        "a's expired"
    );
    assert!(
        !store
            .acquire("l:c".into(), "c:2".into(), 2, ttl)
            .await
            .unwrap(),
        "b's held"
    );
    assert!(redis.keys_without_ttl("attitude:").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_client_keys_leave_redis_memory_bounded_by_the_expiry() {
    let redis = RedisServer::start();
    let store = store(&redis, Duration::from_secs(2)).await;
    let before = redis.used_memory();
    // Each distinct client takes one cell of a GCRA whose interval is 1 s: its key lives 1 s.
    const KEYS: u32 = 1_000_000;
    const IN_FLIGHT: u32 = 256;
    let started = Instant::now();
    let mut most_keys = 0u64;
    let mut failed = 0u32;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..KEYS {
        if tasks.len() as u32 >= IN_FLIGHT {
            match tasks.join_next().await.expect("a task").expect("joined") {
                Ok(Ok(1)) => {}
                Ok(_) | Err(FleetError::Timeout | FleetError::Open | FleetError::Failed(_)) => {
                    failed += 1
                }
            }
        }
        let ask = store.gcra(
            format!("flood:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            Duration::from_secs(1),
            1,
            1,
        );
        tasks.spawn(ask);
        if i % 100_000 == 0 {
            let size: u64 = redis.cli(&["DBSIZE"]).trim().parse().unwrap_or(0);
            most_keys = most_keys.max(size);
        }
    }
    while let Some(done) = tasks.join_next().await {
        if !matches!(done.expect("joined"), Ok(Ok(1))) {
            failed += 1;
        }
    }
    let took = started.elapsed();
    let rate = f64::from(KEYS) / took.as_secs_f64();
    let peak = redis.used_memory();
    assert_eq!(failed, 0, "every new client was allowed");
    // While running: at most about a second's worth of keys lives at once.
    assert!(
        most_keys as f64 <= rate * 2.0 + 1000.0,
        "{most_keys} keys alive at {rate:.0} keys/s"
    );
    // After the expiry, Redis's active expiry has dropped (nearly) all of them.
    let mut left = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = redis.cli(&["DBSIZE"]).trim().parse().unwrap();
        if left < 1000 {
            break;
        }
    }
    assert!(left < 1000, "{left} keys left 10 s after the flood");
    let after = redis.used_memory();
    eprintln!(
        "1M keys in {took:?} ({rate:.0}/s): at most {most_keys} alive, memory {before} -> peak {peak} -> {after} bytes, {left} left"
    );
    assert!(
        after < before + 8 * 1024 * 1024,
        "memory after the expiry: {before} -> {after}"
    );
}
