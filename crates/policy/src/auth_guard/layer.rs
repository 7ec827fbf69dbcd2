use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attitude_service::address::canonical_ip;
use ipnet::IpNet;
use metrics::Counter;
use tower_layer::Layer;

use super::AuthGuard;
use crate::Decisions;
use crate::fleet::FleetPolicies;

/// Brute-force guard settings.
pub struct AuthGuardConfig {
    /// Failures allowed per client network within `window`.
    pub max_failures_per_client: u32,
    /// Failures allowed per login (from anywhere) within `window`.
    pub max_failures_per_login: u32,
    /// The counting window.
    pub window: Duration,
    /// How long a network or a login stays banned.
    pub ban: Duration,
    /// Delay before the reply to each failed exchange.
    pub failure_delay: Duration,
    /// Client networks are addresses reduced to these prefixes.
    pub prefix_v4: u8,
    /// IPv6 prefix length.
    pub prefix_v6: u8,
    /// Most networks and logins tracked.
    pub max_entries: usize,
    /// Enforce, or dry-run: failures are counted and delayed, bans are only counted (as
    /// `would_reject` decisions) and nothing is refused.
    pub mode: attitude_layers::Mode,
    /// `policy="auth"` decisions: `allow` (235), `reject` (a failed exchange).
    pub decisions: Decisions,
    /// Bans of client networks.
    pub client_bans: Counter,
    /// Bans of logins.
    pub login_bans: Counter,
    /// The fleet's store: failures and bans counted there (every replica, every listener),
    /// with the bans it reports kept here too, so they hold while it is away.
    pub fleet: Option<Arc<dyn FleetPolicies>>,
}

impl std::fmt::Debug for AuthGuardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuardConfig").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Tally {
    /// Failures in the current window, and when it started.
    failures: HashMap<String, (u32, Instant)>,
    /// Banned until.
    bans: HashMap<String, Instant>,
}

/// What the guard remembers: failure counts and bans. The process keeps one and gives it to
/// every listener's guard and to every configuration a reload brings, so that failures on 587
/// and on 465 count together and a reload forgets no ban; each guard applies its own limits.
#[derive(Default)]
pub struct AuthGuardState {
    tally: Mutex<Tally>,
}

impl std::fmt::Debug for AuthGuardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuardState").finish_non_exhaustive()
    }
}

/// A guard's settings over the counts and bans it shares.
pub(super) struct Shared {
    pub(super) config: AuthGuardConfig,
    state: Arc<AuthGuardState>,
}

/// What a failure led to.
pub(super) enum After {
    /// Under the limits.
    Counted,
    /// A limit was crossed: banned now.
    Banned,
}

impl Shared {
    pub(super) fn network(&self, ip: IpAddr) -> String {
        let ip = canonical_ip(ip);
        let bits = if ip.is_ipv4() {
            self.config.prefix_v4
        } else {
            self.config.prefix_v6
        };
        IpNet::new(ip, bits).map_or_else(|_| ip.to_string(), |n| n.trunc().to_string())
    }

    /// True when the network or the login is banned now.
    pub(super) fn banned(&self, network: &str, login: Option<&str>) -> bool {
        let tally = self.state.tally.lock().expect("auth guard lock");
        let now = Instant::now();
        let live = |key: &str| tally.bans.get(key).is_some_and(|until| *until > now);
        live(&format!("net:{network}"))
            || login.is_some_and(|l| live(&format!("login:{}", login_key(l))))
    }

    /// The keys of a network and a login, as counted and banned.
    pub(super) fn subjects(network: &str, login: Option<&str>) -> Vec<String> {
        std::iter::once(format!("net:{network}"))
            .chain(login.map(|l| format!("login:{}", login_key(l))))
            .collect()
    }

    /// Asks the fleet's store whether the network or the login is banned (`None`: no fleet):
    /// the bans it holds, kept here too (for when it is away), and true if there is one.
    pub(super) fn fleet_banned(
        self: &Arc<Self>,
        network: &str,
        login: Option<&str>,
    ) -> Option<impl Future<Output = bool> + Send + 'static> {
        let fleet = self.config.fleet.as_ref()?;
        let subjects = Self::subjects(network, login);
        let ask = fleet.banned(subjects.clone());
        let this = self.clone();
        Some(async move {
            let Ok(left) = ask.await else {
                return false;
            };
            let now = Instant::now();
            let mut tally = this.state.tally.lock().expect("auth guard lock");
            if tally.bans.len() >= this.config.max_entries {
                tally.bans.retain(|_, until| *until > now);
            }
            let mut banned = false;
            for (key, left) in subjects.into_iter().zip(left) {
                if let Some(left) = left {
                    let ban = tally.bans.entry(key).or_insert(now + left);
                    *ban = (*ban).max(now + left);
                    banned = true;
                }
            }
            banned
        })
    }

    /// Counts a failed exchange in the fleet's store, or here when there is none or it is away.
    pub(super) async fn failed_anywhere(&self, network: &str, login: Option<&str>) -> After {
        let Some(fleet) = &self.config.fleet else {
            return self.failed(network, login);
        };
        let config = &self.config;
        let dry_run = config.mode == attitude_layers::Mode::DryRun;
        let mut after = After::Counted;
        for key in Self::subjects(network, login) {
            let limit = self.limit_of(&key);
            match fleet
                .tally(&key, limit, config.window, config.ban, dry_run)
                .await
            {
                Ok(false) => {}
                Ok(true) if dry_run => {
                    config.decisions.would_reject.increment(1);
                    tracing::info!(would_ban = %key, "too many failed AUTH attempts in the fleet (dry-run)");
                }
                Ok(true) => {
                    self.banned_now(&key);
                    self.state
                        .tally
                        .lock()
                        .expect("auth guard lock")
                        .bans
                        .insert(key, Instant::now() + config.ban);
                    after = After::Banned;
                }
                // The store is away: this process counts alone.
                Err(_) => return self.failed(network, login),
            }
        }
        after
    }

    /// The failures `key` (a network's or a login's) may have in a window.
    fn limit_of(&self, key: &str) -> u32 {
        if key.starts_with("net:") {
            self.config.max_failures_per_client
        } else {
            self.config.max_failures_per_login
        }
    }

    /// Counts and logs a ban of `key`.
    fn banned_now(&self, key: &str) {
        let config = &self.config;
        if key.starts_with("net:") {
            config.client_bans.increment(1);
        } else {
            config.login_bans.increment(1);
        }
        tracing::warn!(banned = %key, ban = ?config.ban, "too many failed AUTH attempts");
    }

    /// Counts a failed exchange.
    pub(super) fn failed(&self, network: &str, login: Option<&str>) -> After {
        let config = &self.config;
        let now = Instant::now();
        let mut tally = self.state.tally.lock().expect("auth guard lock");
        if tally.failures.len() + tally.bans.len() >= config.max_entries {
            tally
                .failures
                .retain(|_, (_, since)| now.duration_since(*since) < config.window);
            tally.bans.retain(|_, until| *until > now);
            if tally.failures.len() >= config.max_entries {
                tally.failures.clear();
            }
        }
        let mut after = After::Counted;
        for key in Self::subjects(network, login) {
            let limit = self.limit_of(&key);
            let entry = tally.failures.entry(key.clone()).or_insert((0, now));
            if now.duration_since(entry.1) >= config.window {
                *entry = (0, now);
            }
            entry.0 += 1;
            if entry.0 >= limit {
                tally.failures.remove(&key);
                if config.mode == attitude_layers::Mode::DryRun {
                    config.decisions.would_reject.increment(1);
                    tracing::info!(would_ban = %key, "too many failed AUTH attempts (dry-run)");
                    continue;
                }
                self.banned_now(&key);
                tally.bans.insert(key, now + config.ban);
                after = After::Banned;
            }
        }
        after
    }
}

/// Adds [`AuthGuard`]. Clones share the counts and bans.
#[derive(Clone)]
pub struct AuthGuardLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthGuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuardLayer").finish_non_exhaustive()
    }
}

impl AuthGuardLayer {
    /// A layer with these settings, and counts of its own.
    pub fn new(config: AuthGuardConfig) -> Self {
        Self::sharing(config, Arc::default())
    }

    /// A layer with these settings over `state`, which other guards (other listeners, the
    /// configurations later reloads bring) share.
    pub fn sharing(config: AuthGuardConfig, state: Arc<AuthGuardState>) -> Self {
        Self {
            shared: Arc::new(Shared { config, state }),
        }
    }
}

impl<S> Layer<S> for AuthGuardLayer {
    type Service = AuthGuard<S>;

    fn layer(&self, inner: S) -> AuthGuard<S> {
        AuthGuard::new(inner, self.shared.clone())
    }
}

/// A login as the guard counts it: the spellings a backend that ignores case (most do) takes
/// as one login are one key (`Alice`, ` ALICE `, `alice@Example.COM.` and `alice@example.com`),
/// so no spelling earns a fresh allowance.
pub(super) fn login_key(login: &str) -> String {
    let login = login.trim().to_lowercase();
    match login.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.trim_end_matches('.')),
        None => login,
    }
}

#[cfg(test)]
mod tests {
    use super::login_key;

    #[test]
    fn spellings_of_one_login_are_one_key() {
        for spelling in ["alice", "Alice", " ALICE "] {
            assert_eq!(login_key(spelling), "alice");
        }
        for spelling in [
            "alice@example.com",
            "Alice@Example.COM",
            "alice@example.com.",
        ] {
            assert_eq!(login_key(spelling), "alice@example.com");
        }
        assert_ne!(login_key("alice"), login_key("alicia"));
    }
}
