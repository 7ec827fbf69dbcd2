//! Stress mode in process (paused clock): the real driver and stack over a duplex stream. A
//! session that waits when stress begins gets the stress timeout at once; under stress a client
//! that drips a byte every 3 s is closed within 15 s, and one error closes a session; trusted
//! clients keep their own limits; when stress ends, the normal ones are back; an upload is held to
//! the stress data rate, also when stress begins while it streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attitude_service::driver::{DriverConfig, SessionResult, Stress, StressLimits};
use attitude_test_support::session::{Backends, Harness};
use tokio::time::Instant;

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// A harness whose driver has stress mode (Postfix's values), its switch, and `exempt`.
fn stressed(backends: &Backends, exempt: &[&str]) -> (Harness, Arc<Stress>) {
    let mut harness = Harness::new(backends, &[addr("198.51.100.1:25")]);
    let stress = Arc::new(Stress::default());
    harness.driver = Arc::new(DriverConfig {
        command_timeout: Duration::from_secs(300),
        stress: Some((
            stress.clone(),
            StressLimits {
                command_timeout: Duration::from_secs(10),
                data_timeout: Duration::from_secs(10),
                min_data_rate: 5000,
                max_errors: 1,
                junk_command_limit: 1,
                exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
            },
        )),
        ..(*harness.driver).clone()
    });
    (harness, stress)
}

#[tokio::test(start_paused = true)]
async fn a_waiting_session_gets_the_stress_timeout_when_stress_begins() {
    let backends = Backends::new();
    let (harness, stress) = stressed(&backends, &[]);
    let (mut c, session) = harness.session();
    c.reply().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !c.closed(Duration::from_millis(10)).await,
        "300 s without stress"
    );
    let began = Instant::now();
    assert!(stress.set(true));
    // The wait began 60 s ago: past the stress timeout already, closed at once.
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);
}

#[tokio::test(start_paused = true)]
async fn under_stress_a_dripping_client_is_closed_within_15_s_and_one_error_closes() {
    let backends = Backends::new();
    let (harness, stress) = stressed(&backends, &[]);
    stress.set(true);
    let (mut c, session) = harness.session();
    c.reply().await;
    let started = Instant::now();
    c.drip(
        b"EHLO a-very-slow-client.example.org",
        Duration::from_secs(3),
    )
    .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(
        started.elapsed() <= Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);

    let (mut c, session) = harness.session();
    c.reply().await;
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    assert!(
        c.reply().await.starts_with("421 4.7.0"),
        "the hard error limit is 1"
    );
    assert_eq!(session.await.unwrap().result, SessionResult::TooManyErrors);
}

#[tokio::test(start_paused = true)]
async fn trusted_clients_keep_their_limits_and_the_normal_ones_come_back() {
    let backends = Backends::new();
    // The harness's clients are in 192.0.2.0/24.
    let (harness, stress) = stressed(&backends, &["192.0.2.0/24"]);
    stress.set(true);
    let (mut c, _session) = harness.session();
    c.reply().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        c.cmd("BOGUS").await.starts_with("500"),
        "trusted: not closed by stress"
    );
    assert!(c.cmd("EHLO trusted.test").await.starts_with("250"));

    let (harness, stress) = stressed(&backends, &[]);
    stress.set(true);
    let (mut c, _session) = harness.session();
    c.reply().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Stress ends: the wait is measured against 300 s again.
    assert!(stress.set(false));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        c.cmd("EHLO back.test").await.starts_with("250"),
        "normal limits again"
    );
}

/// Issue 16, item 8: an upload just above the normal minimum rate (500 B/s) may hold a slot for
/// hours; under stress it must keep the stress rate (5000 B/s), also when stress begins while
/// the message streams. Without stress the same upload is delivered.
#[tokio::test(start_paused = true)]
async fn under_stress_a_slow_upload_is_held_to_the_stress_data_rate() {
    use attitude_test_support::session::{Client, Script};
    const A: &str = "198.51.100.1:25";
    /// 1000 bytes a second for `seconds`; false once attitude stopped reading.
    async fn upload(c: &mut Client, seconds: u32) -> bool {
        let line = [b'x'; 998];
        for _ in 0..seconds {
            if !c.try_send(&[&line[..], b"\r\n"].concat()).await {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        true
    }
    let up_to_data = Script::alice_to_bob_up_to_data;

    // No stress: 60 s at 1000 B/s is within the normal rate, and the message is delivered.
    let backends = Backends::new();
    backends.script(addr(A), up_to_data().content("250 2.0.0 queued"));
    let (harness, _stress) = stressed(&backends, &[]);
    let (mut c, _session) = harness.session();
    c.start_alice_to_bob().await;
    assert!(upload(&mut c, 60).await);
    assert!(c.cmd(".").await.starts_with("250 2.0.0"));
    assert_eq!(backends.messages(addr(A)).len(), 1);

    // Stress begins 5 s into the upload: the 10 s it allows plus 1 s per 5000 bytes ends it at
    // about 12.5 s; the message is never delivered.
    let backends = Backends::new();
    backends.script(addr(A), up_to_data().hold());
    let (harness, stress) = stressed(&backends, &[]);
    let (mut c, session) = harness.session();
    c.start_alice_to_bob().await;
    let started = Instant::now();
    assert!(upload(&mut c, 5).await);
    stress.set(true);
    upload(&mut c, 60).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(12) && took <= Duration::from_secs(14),
        "{took:?}"
    );
    assert_eq!(session.await.unwrap().result, SessionResult::Timeout);
    assert!(backends.messages(addr(A)).is_empty());
}
