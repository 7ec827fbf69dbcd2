//! The greylist layer with a controllable clock: first attempt 451, early retry 451, retry after
//! the delay 250, allowlisting, exemptions, dry-run, and a restart through the saved file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attitude_codec::{Command, MailFrom, RcptTo, Reply};
use attitude_layers::Mode;
use attitude_policy::Decisions;
use attitude_policy::greylist::{Greylist, GreylistConfig, GreylistLayer, Timing};
use attitude_service::{BoxError, EnhancedStatus, Event, Request, Session, Transaction};
use tower_layer::Layer;
use tower_service::Service;

struct Clock(Arc<AtomicU64>);

impl Clock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
    }
}

fn greylist(clock: &Clock, file: Option<std::path::PathBuf>, mode: Mode) -> Arc<Greylist> {
    let now = clock.0.clone();
    Arc::new(
        Greylist::open(GreylistConfig {
            timing: Timing::default(),
            prefix_v4: 24,
            prefix_v6: 64,
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
            file,
            mode,
            decisions: Decisions::noop(),
            entries: metrics::Gauge::noop(),
            clock: Arc::new(move || now.load(Ordering::SeqCst)),
            fleet: None,
            on_error: Default::default(),
            store_errors: metrics::Counter::noop(),
        })
        .unwrap(),
    )
}

fn rcpt(client: &str, sender: &str, to: &str) -> Request {
    let addr: SocketAddr = format!("{client}:40000").parse().unwrap();
    let mut session = Session::new(1, addr, "127.0.0.1:25".parse().unwrap());
    session.transaction = Some(Box::new(Transaction {
        mail: MailFrom {
            address: sender.into(),
            ..MailFrom::default()
        },
        rcpts: Vec::new(),
        started: Instant::now(),
        data_bytes: 0,
        bdat: false,
    }));
    Request {
        session: Arc::new(session),
        event: Event::Command(Command::Rcpt(RcptTo::new(to))),
    }
}

async fn code(greylist: &Arc<Greylist>, req: Request) -> (u16, String) {
    let backend = tower::service_fn(|_: Request| async {
        Ok::<_, BoxError>(Reply::new(250, EnhancedStatus::new(2, 1, 5), "backend"))
    });
    let mut svc = GreylistLayer::new(greylist.clone()).layer(backend);
    let reply = svc.call(req).await.unwrap();
    (reply.code(), reply.to_string())
}

#[tokio::test]
async fn first_attempt_early_retry_then_pass() {
    let clock = Clock(Arc::new(AtomicU64::new(1_800_000_000)));
    let g = greylist(&clock, None, Mode::Enforce);
    let (c, text) = code(&g, rcpt("192.0.2.10", "a@sender.example", "b@example.com")).await;
    assert_eq!(c, 451, "{text}");
    assert!(
        text.contains("4.7.1") && text.contains("5 minutes"),
        "{text}"
    );
    clock.advance(Duration::from_secs(120));
    // Another address in the same /24 is the same client network.
    let (c, text) = code(&g, rcpt("192.0.2.77", "A@Sender.example", "b@example.com")).await;
    assert_eq!(c, 451, "early retry: {text}");
    assert!(text.contains("3 minutes"), "{text}");
    clock.advance(Duration::from_secs(181));
    assert_eq!(
        code(&g, rcpt("192.0.2.10", "a@sender.example", "b@example.com"))
            .await
            .0,
        250
    );
    // A different triplet from the same client is still greylisted.
    assert_eq!(
        code(&g, rcpt("192.0.2.10", "a@sender.example", "c@example.com"))
            .await
            .0,
        451
    );
    // Trusted networks are not greylisted.
    assert_eq!(
        code(&g, rcpt("10.1.2.3", "x@y.example", "b@example.com"))
            .await
            .0,
        250
    );
    // Nor are exempt sessions.
    let exempt = rcpt("198.51.100.1", "x@y.example", "b@example.com");
    exempt.session.marks.mark_exempt("test");
    assert_eq!(code(&g, exempt).await.0, 250);
}

#[tokio::test]
async fn allowlist_after_three_passes() {
    let clock = Clock(Arc::new(AtomicU64::new(1_800_000_000)));
    let g = greylist(&clock, None, Mode::Enforce);
    for i in 0..3 {
        let to = format!("r{i}@example.com");
        assert_eq!(
            code(&g, rcpt("203.0.113.5", "s@x.example", &to)).await.0,
            451
        );
        clock.advance(Duration::from_secs(301));
        assert_eq!(
            code(&g, rcpt("203.0.113.5", "s@x.example", &to)).await.0,
            250
        );
    }
    assert_eq!(
        code(
            &g,
            rcpt("203.0.113.9", "new@other.example", "n@example.com")
        )
        .await
        .0,
        250,
        "the network is allowlisted"
    );
}

#[tokio::test]
async fn dry_run_passes_everything() {
    let clock = Clock(Arc::new(AtomicU64::new(1_800_000_000)));
    let g = greylist(&clock, None, Mode::DryRun);
    assert_eq!(
        code(&g, rcpt("192.0.2.10", "a@s.example", "b@example.com"))
            .await
            .0,
        250
    );
}

#[tokio::test]
async fn survives_a_restart_through_the_saved_file() {
    let dir = std::env::temp_dir().join(format!("attitude-greylist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("greylist.txt");
    let clock = Clock(Arc::new(AtomicU64::new(1_800_000_000)));
    let g = greylist(&clock, Some(file.clone()), Mode::Enforce);
    assert_eq!(
        code(&g, rcpt("192.0.2.10", "a@s.example", "b@example.com"))
            .await
            .0,
        451
    );
    g.save();
    drop(g);
    clock.advance(Duration::from_secs(400));
    let restarted = greylist(&clock, Some(file), Mode::Enforce);
    assert_eq!(
        code(
            &restarted,
            rcpt("192.0.2.10", "a@s.example", "b@example.com")
        )
        .await
        .0,
        250,
        "the first attempt was remembered across the restart"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
