//! The operations, each one script (or one command) that sets its keys' expiry in the same
//! step, on Redis's clock. Times in the scripts: `TIME` in microseconds (GCRA), milliseconds
//! (leases, tallies) or seconds (greylist).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use attitude_layers::fleet::{FleetFuture, FleetStore};
use redis::Script;

use crate::{Op, Redis};

/// GCRA: KEYS[1] holds the theoretical arrival time (µs); ARGV interval (µs), burst, cells
/// wanted. Takes as many of those as are free: returns {cells, 0}, or {0, wait in µs} when none
/// is. The key expires when it is back at full burst.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then return {0, tat - now - tau} end
local cells = math.min(tonumber(ARGV[3]), math.floor((tau - (tat - now)) / interval) + 1)
local new = tat + cells * interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000))
return {cells, 0}
",
    )
});

/// Lease: KEYS[1] a sorted set of holders scored by expiry (ms); ARGV holder, limit, ttl (ms).
/// Expired holders are dropped first; returns 1 when taken.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
",
    )
});

/// Renewal: as taking, without the limit (a session held stays counted, even when Redis lost
/// it for a while).
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
",
    )
});

/// Failure tally: KEYS[1] the count, KEYS[2] the ban; ARGV limit, window (ms), ban (ms),
/// dry-run (1: count, never ban). Returns 1 when this failure crossed the limit.
static TALLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
return 1
",
    )
});

/// Greylist: KEYS[1] the triplet (hash: first, passed), KEYS[2] its client network (hash:
/// passes, until); ARGV delay, retry window, pass ttl, allowlist after, allowlist ttl (s).
/// Returns {0} allowlisted, {1} pass, {2, wait} defer. Same rules as the process's store.
static GREYLIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(redis.call('TIME')[1])
local delay, window, pass_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local after, allow_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local client_ttl = math.max(pass_ttl, allow_ttl)
local allowed = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
if allowed > now then
  redis.call('HSET', KEYS[2], 'until', now + allow_ttl)
  redis.call('EXPIRE', KEYS[2], client_ttl)
  return {0, 0}
end
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or '-1')
local passed = tonumber(redis.call('HGET', KEYS[1], 'passed') or '0')
if first >= 0 and passed > now then
  redis.call('HSET', KEYS[1], 'passed', now + pass_ttl)
  redis.call('EXPIRE', KEYS[1], pass_ttl)
  return {1, 0}
end
if first >= 0 and passed == 0 and now <= first + window then
  if now < first + delay then return {2, first + delay - now} end
  redis.call('HSET', KEYS[1], 'passed', now + pass_ttl)
  redis.call('EXPIRE', KEYS[1], pass_ttl)
  local passes = redis.call('HINCRBY', KEYS[2], 'passes', 1)
  if passes >= after then redis.call('HSET', KEYS[2], 'until', now + allow_ttl) end
  redis.call('EXPIRE', KEYS[2], client_ttl)
  return {1, 0}
end
redis.call('HSET', KEYS[1], 'first', now, 'passed', 0)
redis.call('EXPIRE', KEYS[1], window)
return {2, delay}
",
    )
});

/// Import of one greylist triplet or client network, unless Redis already has it (Redis's
/// state is newer): KEYS[1]; ARGV the hash's fields and values, then the expiry (Unix seconds).
/// (Sent with `EVAL` in a pipeline: it runs once per start at most.)
const IMPORT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local at = tonumber(ARGV[#ARGV])
if at <= tonumber(redis.call('TIME')[1]) then return 0 end
for i = 1, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], at)
return 1
";

/// A greylist entry to import: a triplet or a client network, as the file has them.
#[derive(Debug, Clone)]
pub enum GreylistEntry {
    /// (network, sender, recipient, first attempt, passed until or 0), Unix seconds.
    Triplet(String, String, String, u64, u64),
    /// (network, passed triplets, allowlisted until or 0).
    Client(String, u32, u64),
}

/// Greylisting times, as the store applies them.
#[derive(Debug, Clone, Copy)]
pub struct GreylistTiming {
    /// A retry passes once this long after the first attempt ...
    pub delay: Duration,
    /// ... within this long of it.
    pub retry_window: Duration,
    /// A passed triplet is remembered this long after its last message.
    pub pass_ttl: Duration,
    /// Passed triplets that allowlist their client network ...
    pub allowlist_after: u32,
    /// ... for this long after its last message.
    pub allowlist_ttl: Duration,
}

/// The store's verdict on one greylisting attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreylistVerdict {
    /// The client network is allowlisted.
    Allowlisted,
    /// The triplet passed before, or passes now.
    Pass,
    /// Try again in this long.
    Defer(Duration),
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Redis {
    /// Greylists one attempt of `network` (its text), `sender` to `recipient`.
    pub fn greylist(
        self: &Arc<Self>,
        network: &str,
        sender: &str,
        recipient: &str,
        timing: GreylistTiming,
    ) -> FleetFuture<GreylistVerdict> {
        let tag = self.tagged(&format!("gl:{network}"));
        let triplet = format!("{tag}:t:{sender}\t{recipient}");
        let client = format!("{tag}:c");
        let mut conn = self.conn();
        let redis = self.clone();
        Box::pin(async move {
            let reply: (u8, u64) = redis
                .run(Op::Greylist, async {
                    GREYLIST
                        .key(triplet)
                        .key(client)
                        .arg(timing.delay.as_secs())
                        .arg(timing.retry_window.as_secs())
                        .arg(timing.pass_ttl.as_secs().max(1))
                        .arg(timing.allowlist_after)
                        .arg(timing.allowlist_ttl.as_secs().max(1))
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(match reply {
                (0, _) => GreylistVerdict::Allowlisted,
                (1, _) => GreylistVerdict::Pass,
                (_, wait) => GreylistVerdict::Defer(Duration::from_secs(wait)),
            })
        })
    }

    /// Imports greylist entries (a file of the process's store) that Redis does not have yet;
    /// entries already expired are skipped. The number imported.
    pub async fn import_greylist(
        self: &Arc<Self>,
        entries: Vec<GreylistEntry>,
        timing: GreylistTiming,
    ) -> redis::RedisResult<usize> {
        let mut conn = self.conn();
        let mut imported = 0;
        for batch in entries.chunks(500) {
            let mut pipe = redis::pipe();
            for entry in batch {
                let call = pipe.cmd("EVAL").arg(IMPORT).arg(1);
                match entry {
                    GreylistEntry::Triplet(net, sender, rcpt, first, passed) => {
                        let tag = self.tagged(&format!("gl:{net}"));
                        let until = if *passed > 0 {
                            *passed
                        } else {
                            first + timing.retry_window.as_secs()
                        };
                        call.arg(format!("{tag}:t:{sender}\t{rcpt}"))
                            .arg("first")
                            .arg(first)
                            .arg("passed")
                            .arg(passed)
                            .arg(until);
                    }
                    GreylistEntry::Client(net, passes, until) => {
                        let tag = self.tagged(&format!("gl:{net}"));
                        let keep = timing.pass_ttl.max(timing.allowlist_ttl).as_secs();
                        let at = (*until).max(unix_now() + keep);
                        call.arg(format!("{tag}:c"))
                            .arg("passes")
                            .arg(passes)
                            .arg("until")
                            .arg(until)
                            .arg(at);
                    }
                }
            }
            let done: Vec<u8> = pipe.query_async(&mut conn).await?;
            imported += done.iter().filter(|d| **d == 1).count();
        }
        Ok(imported)
    }

    /// Counts one failure of `subject` (`net:...`, `login:...`) in `window`; at `limit` the
    /// count starts over and the subject is banned for `ban` (unless `dry_run`). True when this
    /// failure crossed the limit.
    pub fn tally(
        self: &Arc<Self>,
        subject: &str,
        limit: u32,
        window: Duration,
        ban: Duration,
        dry_run: bool,
    ) -> FleetFuture<bool> {
        let count = self.key("auth", subject);
        let banned = format!("{count}:ban");
        let mut conn = self.conn();
        let redis = self.clone();
        Box::pin(async move {
            let crossed: u8 = redis
                .run(Op::Tally, async {
                    TALLY
                        .key(count)
                        .key(banned)
                        .arg(limit)
                        .arg(ms(window))
                        .arg(ms(ban))
                        .arg(u8::from(dry_run))
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(crossed == 1)
        })
    }

    /// The ban left on each of `subjects` (`None`: not banned), in their order.
    pub fn banned(self: &Arc<Self>, subjects: Vec<String>) -> FleetFuture<Vec<Option<Duration>>> {
        let mut pipe = redis::pipe();
        for subject in &subjects {
            pipe.cmd("PTTL")
                .arg(format!("{}:ban", self.key("auth", subject)));
        }
        let mut conn = self.conn();
        let redis = self.clone();
        Box::pin(async move {
            let ttls: Vec<i64> = redis
                .run(Op::Banned, async { pipe.query_async(&mut conn).await })
                .await?;
            Ok(ttls
                .into_iter()
                .map(|ms| (ms > 0).then(|| Duration::from_millis(ms.unsigned_abs())))
                .collect())
        })
    }

    /// Stores `value` under `table`/`key` for `ttl` (a verdict: pregreet, DNSBL).
    pub fn put(
        self: &Arc<Self>,
        table: &str,
        key: &str,
        value: String,
        ttl: Duration,
    ) -> FleetFuture<()> {
        let key = self.key(table, key);
        let mut conn = self.conn();
        let redis = self.clone();
        Box::pin(async move {
            redis
                .run(Op::Put, async {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("PX")
                        .arg(ms(ttl))
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await
        })
    }

    /// The value under `table`/`key` and how long it has left, if any.
    pub fn get(
        self: &Arc<Self>,
        table: &str,
        key: &str,
    ) -> FleetFuture<Option<(String, Duration)>> {
        let key = self.key(table, key);
        let mut conn = self.conn();
        let redis = self.clone();
        Box::pin(async move {
            let (value, ttl): (Option<String>, i64) = redis
                .run(Op::Get, async {
                    redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(value
                .filter(|_| ttl > 0)
                .map(|v| (v, Duration::from_millis(ttl.unsigned_abs()))))
        })
    }
}

/// The generic layers' store: `Arc<Redis>` as `Arc<dyn FleetStore>` through this wrapper.
#[derive(Debug, Clone)]
pub struct FleetRedis(pub Arc<Redis>);

impl FleetStore for FleetRedis {
    fn gcra(
        &self,
        key: String,
        interval: Duration,
        burst: u32,
        want: u32,
    ) -> FleetFuture<Result<u32, Duration>> {
        let redis = self.0.clone();
        let key = redis.key("rate", &key);
        let mut conn = redis.conn();
        let interval = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Box::pin(async move {
            let (cells, wait): (u32, u64) = redis
                .run(Op::Gcra, async {
                    GCRA.key(key)
                        .arg(interval)
                        .arg(burst.max(1))
                        .arg(want.max(1))
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(if cells > 0 {
                Ok(cells)
            } else {
                Err(Duration::from_micros(wait))
            })
        })
    }

    fn acquire(&self, key: String, holder: String, limit: u32, ttl: Duration) -> FleetFuture<bool> {
        let redis = self.0.clone();
        let key = redis.key("lease", &key);
        let mut conn = redis.conn();
        // Leases given back meanwhile go in the same write (one round trip for both).
        let releases = redis.take_releases();
        Box::pin(async move {
            let taken: u8 = redis
                .run(Op::Acquire, async {
                    if !releases.is_empty() {
                        let mut pipe = redis::pipe();
                        for (key, holder) in &releases {
                            pipe.cmd("ZREM").arg(key).arg(holder).ignore();
                        }
                        pipe.cmd("EVALSHA")
                            .arg(ACQUIRE.get_hash())
                            .arg(1)
                            .arg(&key)
                            .arg(&holder)
                            .arg(limit)
                            .arg(ms(ttl));
                        match pipe.query_async::<(u8,)>(&mut conn).await {
                            Ok((taken,)) => return Ok(taken),
                            // Not loaded yet (a new or restarted Redis): the releases are done,
                            // the script is loaded and run below.
                            Err(e)
                                if e.kind()
                                    == redis::ErrorKind::Server(
                                        redis::ServerErrorKind::NoScript,
                                    ) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    ACQUIRE
                        .key(&key)
                        .arg(&holder)
                        .arg(limit)
                        .arg(ms(ttl))
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(taken == 1)
        })
    }

    fn renew(&self, leases: Vec<(String, String)>, ttl: Duration) -> FleetFuture<()> {
        let redis = self.0.clone();
        let mut conn = redis.conn();
        Box::pin(async move {
            redis
                .run(Op::Renew, async {
                    for (key, holder) in leases {
                        let _: u8 = RENEW
                            .key(redis.key("lease", &key))
                            .arg(holder)
                            .arg(ms(ttl))
                            .invoke_async(&mut conn)
                            .await?;
                    }
                    Ok(())
                })
                .await
        })
    }

    fn release(&self, leases: Vec<(String, String)>) -> FleetFuture<()> {
        let redis = self.0.clone();
        let full: Vec<(String, String)> = leases
            .into_iter()
            .map(|(key, holder)| (redis.key("lease", &key), holder))
            .collect();
        // Queued: the next acquire takes them along, or a flush a moment later sends them.
        if redis.queue_releases(full) {
            let flush = redis.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RELEASE_FLUSH).await;
                let releases = flush.take_releases();
                if releases.is_empty() {
                    return;
                }
                let mut pipe = redis::pipe();
                for (key, holder) in &releases {
                    pipe.cmd("ZREM").arg(key).arg(holder).ignore();
                }
                let mut conn = flush.conn();
                // A lost release only means the lease expires by itself.
                let _ = flush
                    .run(Op::Release, async {
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await;
            });
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// How long given-back leases wait for an acquire to take them along before they are sent.
const RELEASE_FLUSH: Duration = Duration::from_millis(2);
