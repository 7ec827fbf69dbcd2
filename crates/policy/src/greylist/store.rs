//! The greylist: triplets (client network, sender, recipient) and allowlisted client networks,
//! bounded in size, with times in wall-clock seconds so that a saved file means the same after a
//! restart.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, from the system clock or a test's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Greylisting times and bounds.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A retry passes once this long after the first attempt (spamd: 25 min; Postgrey: 5 min).
    pub delay: Duration,
    /// ... and only within this long of the first attempt; later it starts over (spamd: 4 h).
    pub retry_window: Duration,
    /// A triplet that passed is remembered this long after its last message (spamd: 36 days).
    pub pass_ttl: Duration,
    /// A client network with this many passed triplets skips greylisting ...
    pub allowlist_after: u32,
    /// ... for this long after its last message (spamd: 36 days).
    pub allowlist_ttl: Duration,
    /// Most triplets remembered (client networks: a tenth of it).
    pub max_entries: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(4 * 3600),
            pass_ttl: Duration::from_secs(36 * 86400),
            allowlist_after: 3,
            allowlist_ttl: Duration::from_secs(36 * 86400),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Triplet {
    /// First attempt of the current round.
    first: u64,
    /// Passed: until when it is remembered (0 while pending).
    passed_until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Client {
    passes: u32,
    /// Allowlisted until (0 while under `allowlist_after`); kept until then or for `pass_ttl`.
    until: u64,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The client network is allowlisted.
    Allowlisted,
    /// The triplet passed before, or passes now.
    Pass,
    /// Try again: first attempt, or too early (in this long).
    Defer(Duration),
}

/// The triplets and client networks.
#[derive(Debug, Default, Clone)]
pub struct Store {
    triplets: HashMap<String, Triplet>,
    clients: HashMap<String, Client>,
    /// Entries dropped because the store was full.
    pub evicted: u64,
}

impl Store {
    /// The verdict on `client` (its network, as text) sending from `sender` to `recipient`
    /// (both lower case) at `now`.
    pub fn check(
        &mut self,
        timing: &Timing,
        now: u64,
        client: &str,
        sender: &str,
        recipient: &str,
    ) -> Verdict {
        if let Some(c) = self.clients.get_mut(client)
            && c.until > now
        {
            c.until = now + timing.allowlist_ttl.as_secs();
            return Verdict::Allowlisted;
        }
        let key = format!("{client}\t{sender}\t{recipient}");
        let delay = timing.delay.as_secs();
        let verdict = match self.triplets.get_mut(&key) {
            Some(t) if t.passed_until > now => {
                t.passed_until = now + timing.pass_ttl.as_secs();
                return Verdict::Pass;
            }
            Some(t) if t.passed_until == 0 && now <= t.first + timing.retry_window.as_secs() => {
                if now >= t.first + delay {
                    t.passed_until = now + timing.pass_ttl.as_secs();
                    Verdict::Pass
                } else {
                    return Verdict::Defer(Duration::from_secs(t.first + delay - now));
                }
            }
            Some(t) => {
                // Expired (the pass long ago, or the retry came too late): a new round.
                *t = Triplet {
                    first: now,
                    passed_until: 0,
                };
                return Verdict::Defer(timing.delay);
            }
            None => {
                self.make_room(timing, now);
                self.triplets.insert(
                    key,
                    Triplet {
                        first: now,
                        passed_until: 0,
                    },
                );
                return Verdict::Defer(timing.delay);
            }
        };
        // A triplet passed for the first time: the client network earns a pass.
        let c = self.clients.entry(client.to_string()).or_insert(Client {
            passes: 0,
            until: 0,
        });
        c.passes += 1;
        if c.passes >= timing.allowlist_after {
            c.until = now + timing.allowlist_ttl.as_secs();
        }
        if self.clients.len() > timing.max_entries / 10 + 1 {
            self.clients
                .retain(|_, c| c.until > now || c.passes < timing.allowlist_after);
            if self.clients.len() > timing.max_entries / 10 + 1 {
                self.evicted += self.clients.len() as u64;
                self.clients.clear();
            }
        }
        verdict
    }

    /// Keeps the triplet map under its bound: expired entries go first, then the oldest pending
    /// tenth.
    fn make_room(&mut self, timing: &Timing, now: u64) {
        if self.triplets.len() < timing.max_entries {
            return;
        }
        let window = timing.retry_window.as_secs();
        self.triplets.retain(|_, t| {
            if t.passed_until == 0 {
                now <= t.first + window
            } else {
                t.passed_until > now
            }
        });
        if self.triplets.len() < timing.max_entries {
            return;
        }
        let mut pending: Vec<(u64, String)> = self
            .triplets
            .iter()
            .filter(|(_, t)| t.passed_until == 0)
            .map(|(k, t)| (t.first, k.clone()))
            .collect();
        let drop = (timing.max_entries / 10).max(1);
        pending.sort_unstable();
        let mut dropped = 0;
        for (_, key) in pending.into_iter().take(drop) {
            self.triplets.remove(&key);
            dropped += 1;
        }
        if dropped == 0 {
            // Only passed triplets: the ones that pass soonest out go.
            let mut passed: Vec<(u64, String)> = self
                .triplets
                .iter()
                .map(|(k, t)| (t.passed_until, k.clone()))
                .collect();
            passed.sort_unstable();
            for (_, key) in passed.into_iter().take(drop) {
                self.triplets.remove(&key);
                dropped += 1;
            }
        }
        self.evicted += dropped;
    }

    /// Triplets remembered.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    /// Every triplet: (client network, sender, recipient, first attempt, passed until or 0).
    pub fn triplets(&self) -> impl Iterator<Item = (&str, &str, &str, u64, u64)> {
        self.triplets.iter().filter_map(|(key, t)| {
            let mut parts = key.splitn(3, '\t');
            Some((
                parts.next()?,
                parts.next()?,
                parts.next()?,
                t.first,
                t.passed_until,
            ))
        })
    }

    /// Every client network: (network, passed triplets, allowlisted until or 0).
    pub fn clients(&self) -> impl Iterator<Item = (&str, u32, u64)> {
        self.clients
            .iter()
            .map(|(client, c)| (client.as_str(), c.passes, c.until))
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty() && self.clients.is_empty()
    }

    /// Writes the live entries to `path` (through a temporary file, then a rename).
    pub fn save(&self, path: &Path, now: u64, timing: &Timing) -> std::io::Result<usize> {
        let tmp = path.with_extension("tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(
            out,
            "# attitude greylist v1: T client sender rcpt first passed_until | C client passes until"
        )?;
        let window = timing.retry_window.as_secs();
        let mut n = 0;
        for (key, t) in &self.triplets {
            let live = if t.passed_until == 0 {
                now <= t.first + window
            } else {
                t.passed_until > now
            };
            if live {
                writeln!(out, "T\t{key}\t{}\t{}", t.first, t.passed_until)?;
                n += 1;
            }
        }
        for (client, c) in &self.clients {
            if c.until > now || c.passes > 0 {
                writeln!(out, "C\t{client}\t{}\t{}", c.passes, c.until)?;
            }
        }
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(n)
    }

    /// Reads a file [`Store::save`] wrote; unreadable lines are skipped and counted.
    pub fn load(path: &Path, timing: &Timing) -> std::io::Result<(Store, usize)> {
        let file = std::fs::File::open(path)?;
        let mut store = Store::default();
        let mut bad = 0;
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let ok = match f.as_slice() {
                ["T", client, sender, rcpt, first, until] => match (first.parse(), until.parse()) {
                    (Ok(first), Ok(passed_until)) if store.triplets.len() < timing.max_entries => {
                        store.triplets.insert(
                            format!("{client}\t{sender}\t{rcpt}"),
                            Triplet {
                                first,
                                passed_until,
                            },
                        );
                        true
                    }
                    _ => false,
                },
                ["C", client, passes, until] => match (passes.parse(), until.parse()) {
                    (Ok(passes), Ok(until)) => {
                        store
                            .clients
                            .insert((*client).to_string(), Client { passes, until });
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                bad += 1;
            }
        }
        Ok((store, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "192.0.2.0/24";

    #[test]
    fn first_early_after_window_and_allowlist() {
        let t = Timing {
            allowlist_after: 2,
            ..Timing::default()
        };
        let mut s = Store::default();
        let t0 = 1_000_000;
        assert_eq!(s.check(&t, t0, C, "a@x", "b@y"), Verdict::Defer(t.delay));
        assert_eq!(
            s.check(&t, t0 + 60, C, "a@x", "b@y"),
            Verdict::Defer(Duration::from_secs(240))
        );
        assert_eq!(s.check(&t, t0 + 300, C, "a@x", "b@y"), Verdict::Pass);
        assert_eq!(s.check(&t, t0 + 86400, C, "a@x", "b@y"), Verdict::Pass);
        // Too late a retry starts over.
        assert!(matches!(
            s.check(&t, t0, C, "late@x", "b@y"),
            Verdict::Defer(_)
        ));
        assert!(matches!(
            s.check(&t, t0 + 5 * 3600, C, "late@x", "b@y"),
            Verdict::Defer(_)
        ));
        // A second passed triplet allowlists the network.
        assert!(matches!(
            s.check(&t, t0, C, "c@x", "d@y"),
            Verdict::Defer(_)
        ));
        assert_eq!(s.check(&t, t0 + 400, C, "c@x", "d@y"), Verdict::Pass);
        assert_eq!(
            s.check(&t, t0 + 500, C, "new@x", "new@y"),
            Verdict::Allowlisted
        );
        assert!(matches!(
            s.check(&t, t0 + 500, "198.51.100.0/24", "new@x", "new@y"),
            Verdict::Defer(_)
        ));
        // The allowlist expires.
        assert!(matches!(
            s.check(&t, t0 + 500 + 37 * 86400, C, "new2@x", "y@y"),
            Verdict::Defer(_)
        ));
    }

    #[test]
    fn bounded() {
        let t = Timing {
            max_entries: 100,
            ..Timing::default()
        };
        let mut s = Store::default();
        for i in 0..10_000u64 {
            s.check(&t, 1000 + i, C, &format!("s{i}@x"), "r@y");
            assert!(s.len() <= 100);
        }
        assert!(s.evicted > 0);
    }

    #[test]
    fn save_and_load() {
        let t = Timing::default();
        let mut s = Store::default();
        s.check(&t, 1000, C, "a@x", "b@y");
        s.check(&t, 1000, C, "p@x", "q@y");
        assert_eq!(s.check(&t, 1400, C, "p@x", "q@y"), Verdict::Pass);
        let dir = std::env::temp_dir().join(format!("greylist-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("greylist");
        assert_eq!(s.save(&path, 1500, &t).unwrap(), 2);
        let (mut loaded, bad) = Store::load(&path, &t).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(loaded.check(&t, 1600, C, "a@x", "b@y"), Verdict::Pass);
        assert_eq!(loaded.check(&t, 1600, C, "p@x", "q@y"), Verdict::Pass);
        std::fs::write(&path, "T\tbroken\nC\tx\t1\t2\n").unwrap();
        let (_, bad) = Store::load(&path, &t).unwrap();
        assert_eq!(bad, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
