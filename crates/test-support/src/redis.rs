//! A real `redis-server` (Debian's) on a loopback port of the test's, with no persistence,
//! killed by its PID when dropped; and `redis-cli` to look at what attitude left in it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::peer::{Peer, free_port, require_tool, scratch_dir, wait_for};

/// A `redis-server` of the test's own.
pub struct RedisServer {
    peer: Option<Peer>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    password: Option<String>,
    tls: Option<PathBuf>,
    dir: PathBuf,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// A plain Redis.
    pub fn start() -> RedisServer {
        Self::start_with(&[], None, None)
    }

    /// A plain Redis on `port` (one the test chose, e.g. where attitude was told to look).
    pub fn start_on(port: u16) -> RedisServer {
        let mut redis = RedisServer {
            peer: None,
            port,
            args: Vec::new(),
            password: None,
            tls: None,
            dir: scratch_dir("redis"),
        };
        redis.spawn();
        redis
    }

    /// A Redis that requires `password`.
    pub fn with_password(password: &str) -> RedisServer {
        Self::start_with(&["--requirepass", password], None, Some(password))
    }

    /// A Redis that speaks TLS only, with `cert`/`key` signed by the CA in `ca` (PEM files).
    pub fn with_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> RedisServer {
        let (cert, key, ca) = (
            cert.display().to_string(),
            key.display().to_string(),
            ca.display().to_string(),
        );
        Self::start_with(
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
            Some(PathBuf::from(ca.clone())),
            None,
        )
    }

    /// A Sentinel (the same binary, `--sentinel`) that watches `master` under the name
    /// `name`; `port` is the sentinel's.
    pub fn sentinel(master: &RedisServer, name: &str) -> RedisServer {
        let mut sentinel = RedisServer {
            peer: None,
            port: free_port(),
            args: Vec::new(),
            password: None,
            tls: None,
            dir: scratch_dir("sentinel"),
        };
        // A sentinel rewrites its configuration file: it must be its own and writable.
        let conf = sentinel.dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n",
                sentinel.port, master.port
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new(require_tool("/usr/bin/redis-server"));
        cmd.arg(&conf).arg("--sentinel");
        let addr = format!("127.0.0.1:{}", sentinel.port)
            .parse()
            .expect("address");
        sentinel.peer = Some(Peer::spawn_listening("redis-sentinel", cmd, addr));
        let port = master.port.to_string();
        assert!(
            wait_for(Duration::from_secs(10), || sentinel
                .cli(&["SENTINEL", "get-master-addr-by-name", name])
                .contains(&port)),
            "the sentinel does not know its master"
        );
        sentinel
    }

    fn start_with(extra: &[&str], tls: Option<PathBuf>, password: Option<&str>) -> RedisServer {
        let mut redis = RedisServer {
            peer: None,
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            password: password.map(str::to_owned),
            tls,
            dir: scratch_dir("redis"),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let bin = require_tool("/usr/bin/redis-server");
        let mut cmd = Command::new(bin);
        let port = self.port.to_string();
        if self.tls.is_some() {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args);
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("address");
        self.peer = Some(Peer::spawn_listening("redis-server", cmd, addr));
        // Listening is not yet answering: wait for PING.
        assert!(
            wait_for(Duration::from_secs(10), || self
                .cli(&["PING"])
                .contains("PONG")),
            "redis-server on {} does not answer PING",
            self.port
        );
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: nothing saved).
    pub fn kill(&mut self) {
        if let Some(peer) = self.peer.take() {
            peer.signal("KILL");
            drop(peer);
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis-cli` with these arguments: its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(require_tool("/usr/bin/redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some(password) = &self.password {
            cmd.env("REDISCLI_AUTH", password);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The keys under `prefix` that would never expire (`TTL` -1).
    pub fn keys_without_ttl(&self, prefix: &str) -> Vec<String> {
        self.keys(prefix)
            .into_iter()
            .filter(|k| self.cli(&["TTL", k]).trim() == "-1")
            .collect()
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    pub fn used_memory(&self) -> u64 {
        self.cli(&["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory in INFO")
    }
}
