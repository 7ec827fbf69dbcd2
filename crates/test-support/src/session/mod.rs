//! An SMTP session in process: the real session driver and command stack (protocol layer, any
//! policy layers, the relay and the backend pool) over `tokio::io::duplex`, against scripted
//! backends reached through the pool's own [`Dial`] seam. No socket, no child process: run it
//! under `#[tokio::test(start_paused = true)]` and timeouts pass without waiting.
//!
//! ```ignore
//! let backends = Backends::new();
//! backends.script(A, Script::smtp(&["PIPELINING"]).expect("MAIL", "250 ok") ...);
//! let harness = Harness::new(&backends, &[A]);
//! let mut client = harness.session();
//! client.expect("220").await;
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attitude_balance::{BackendSpec, IdentityMode, Offer, Pool, PoolConfig};
use attitude_edge::Stream;
use attitude_service::driver::{self, DriverConfig, DriverMetrics, SessionSummary, Shutdown};
use attitude_service::protocol::{BackendOffer, ProtocolConfig, ProtocolLayer};
use attitude_service::relay::{Relay, RelayConfig, RelayMetrics, RelayShared, Router};
use attitude_service::{BoxCommand, Session};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;
use tower::Layer;

mod script;

pub use script::{Backends, Script};

/// Buffer of each in-process connection, each way.
const PIPE: usize = 256 * 1024;

/// The real stack of one listener, in process: driver settings, protocol layer, an optional
/// policy layer, the relay, and a pool over [`Backends`].
pub struct Harness {
    /// The pool (started, health checks off unless the configuration turns them on).
    pub pool: Pool,
    /// Session driver settings.
    pub driver: Arc<DriverConfig>,
    /// The protocol layer's settings.
    pub protocol: ProtocolConfig,
    /// The relay's time limits.
    pub relay: RelayConfig,
    /// Wraps the relay in policy layers (innermost first), if set.
    pub policies: Option<Arc<dyn Fn(BoxCommand) -> BoxCommand + Send + Sync>>,
    /// The shutdown stages every session of this harness watches.
    pub shutdown: Shutdown,
    /// More pools after `pool` (the default), and the router that chooses among them
    /// ([`Harness::route`]).
    pub routed: Option<(Vec<Pool>, Arc<dyn Router>)>,
    ids: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

/// The pool settings of a harness: health checks off, one failover.
pub fn pool_config() -> PoolConfig {
    let mut config = PoolConfig {
        helo_name: "attitude.test".into(),
        ..PoolConfig::default()
    };
    config.health.enabled = false;
    config
}

/// `addrs` as static backends of weight 1, no identity forwarding.
pub fn specs(addrs: &[SocketAddr]) -> Vec<BackendSpec> {
    addrs
        .iter()
        .map(|addr| BackendSpec {
            addr: *addr,
            weight: 1,
            identity: IdentityMode::None,
        })
        .collect()
}

impl Harness {
    /// The defaults over `backends` reached at `addrs`. Call within a Tokio runtime.
    pub fn new(backends: &Backends, addrs: &[SocketAddr]) -> Self {
        Self::with_pool(backends, addrs, pool_config())
    }

    /// As [`Harness::new`], with these pool settings.
    pub fn with_pool(backends: &Backends, addrs: &[SocketAddr], config: PoolConfig) -> Self {
        let pool = Pool::with_dial(config, None, Arc::new(backends.clone()));
        pool.set_source("static", specs(addrs));
        pool.start();
        let offer = pool.clone();
        Self {
            pool,
            driver: Arc::new(DriverConfig {
                hostname: "attitude.test".into(),
                ..DriverConfig::default()
            }),
            protocol: ProtocolConfig {
                hostname: "attitude.test".into(),
                backends: Some(BackendOffer::new(move || offer.offer())),
                ..ProtocolConfig::default()
            },
            relay: RelayConfig::default(),
            policies: None,
            shutdown: Shutdown::default(),
            routed: None,
            ids: 1.into(),
        }
    }

    /// Routes recipients with `router` over the default pool and, after it, one started pool
    /// per entry of `pools` (a name and its backends' addresses). EHLO then offers what the
    /// backends of every pool offer.
    pub fn route(
        &mut self,
        backends: &Backends,
        pools: &[(&str, &[SocketAddr])],
        router: Arc<dyn Router>,
    ) {
        let pools: Vec<Pool> = pools
            .iter()
            .map(|(name, addrs)| {
                let pool = Pool::with_dial(
                    PoolConfig {
                        name: (*name).into(),
                        ..pool_config()
                    },
                    None,
                    Arc::new(backends.clone()),
                );
                pool.set_source("static", specs(addrs));
                pool.start();
                pool
            })
            .collect();
        let all: Vec<Pool> = std::iter::once(self.pool.clone())
            .chain(pools.iter().cloned())
            .collect();
        self.protocol.backends = Some(BackendOffer::new(move || {
            Offer::of(all.iter().flat_map(Pool::usable_caps))
        }));
        self.routed = Some((pools, router));
    }

    /// Opens a connection to each of `addrs` (each runs its next script up to EHLO) and leaves
    /// it idle in the pool: the pool then knows what they offer, as after a health check, and
    /// the next transaction reuses the connection (its script goes on).
    pub async fn learn(&self, addrs: &[SocketAddr]) {
        Self::learn_in(&self.pool, addrs).await;
    }

    /// [`Harness::learn`] for the backends of another pool (one of [`Harness::route`]'s).
    pub async fn learn_in(pool: &Pool, addrs: &[SocketAddr]) {
        let identity = attitude_balance::ClientIdentity {
            addr: "192.0.2.253:40000".parse().expect("address"),
            local: "192.0.2.254:25".parse().expect("address"),
            helo: None,
            esmtp: true,
            login: None,
        };
        let mut leases = Vec::new();
        for addr in addrs {
            let others: Vec<SocketAddr> = pool
                .backends()
                .iter()
                .map(|b| b.addr())
                .filter(|a| a != addr)
                .collect();
            let lease = pool
                .checkout(&identity, &others)
                .await
                .expect("a connection to learn what the backend offers");
            leases.push(lease);
        }
        for lease in leases {
            lease.release();
        }
    }

    /// Starts one client session; the handle gives its summary once it ended.
    pub fn session(&self) -> (Client, JoinHandle<SessionSummary>) {
        let id = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client_addr: SocketAddr = format!("192.0.2.{}:{}", id % 250 + 1, 40000 + id % 20000)
            .parse()
            .expect("address");
        let local: SocketAddr = "192.0.2.254:25".parse().expect("address");
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let mut session = Session::new(id, client_addr, local);
        session.starttls = self.driver.tls.is_some();
        let relay = match &self.routed {
            None => RelayShared::new(
                self.relay.clone(),
                self.pool.clone(),
                RelayMetrics::register(),
            ),
            Some((pools, router)) => RelayShared::routed(
                self.relay.clone(),
                std::iter::once(self.pool.clone())
                    .chain(pools.iter().cloned())
                    .collect(),
                Some(router.clone()),
                RelayMetrics::register(),
            ),
        };
        let mut inner = BoxCommand::new(Relay::new(relay));
        if let Some(policies) = &self.policies {
            inner = policies(inner);
        }
        let service = ProtocolLayer::new(self.protocol.clone()).layer(inner);
        let task = tokio::spawn(driver::drive(
            Stream::Plain(theirs),
            session,
            service,
            self.driver.clone(),
            self.shutdown.clone(),
            DriverMetrics::register(),
        ));
        (Client::new(ours), task)
    }
}

/// The client end of an in-process session.
#[derive(Debug)]
pub struct Client {
    io: BufReader<DuplexStream>,
}

impl Client {
    fn new(io: DuplexStream) -> Self {
        Self {
            io: BufReader::new(io),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.io
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write to the session");
    }

    /// Writes `bytes`; `false` when the session has closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.io.get_mut().write_all(bytes).await.is_ok()
    }

    /// Sends `bytes` one at a time, `every` apart, until they are all sent or the session
    /// closed (a slowloris client).
    pub async fn drip(&mut self, bytes: &[u8], every: std::time::Duration) {
        for byte in bytes {
            if !self.try_send(&[*byte]).await {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The next whole reply, lines joined with `\n` (without CRLF); empty when the session
    /// closed.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// The greeting, EHLO, then alice's transaction for bob up to the 354; panics unless each
    /// step is accepted.
    pub async fn start_alice_to_bob(&mut self) {
        assert!(self.reply().await.starts_with("220"));
        assert!(self.cmd("EHLO client.test").await.starts_with("250"));
        assert!(
            self.cmd("MAIL FROM:<alice@example.org>")
                .await
                .starts_with("250")
        );
        assert!(
            self.cmd("RCPT TO:<bob@example.com>")
                .await
                .starts_with("250")
        );
        assert!(self.cmd("DATA").await.starts_with("354"));
    }

    /// Sends `line` with CRLF and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Whether the session closed (reads to the end, within `limit` of virtual time).
    pub async fn closed(&mut self, limit: Duration) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(limit, self.io.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }
}
