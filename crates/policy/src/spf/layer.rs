use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use mail_auth::{MessageAuthenticator, SpfResult};
use metrics::Counter;
use tower_layer::Layer;

use super::Spf;
use crate::Decisions;

/// SPF settings.
pub struct SpfConfig {
    /// The resolver (see [`crate::dns::resolver`]).
    pub resolver: TokioResolver,
    /// attitude's own host name (the SPF `%{r}` macro).
    pub hostname: String,
    /// Enforce refuses `fail` with 550 5.7.23; dry-run only counts and logs it.
    pub mode: attitude_layers::Mode,
    /// How long one check may take (then it counts as `temperror` and passes).
    pub timeout: Duration,
    /// Clients never checked.
    pub trusted_networks: Vec<IpNet>,
    /// How long a result for the same client address, sender and HELO is reused.
    pub cache_ttl: Duration,
    /// Most results cached.
    pub max_cache: usize,
    /// `policy="spf"` decisions.
    pub decisions: Decisions,
}

impl std::fmt::Debug for SpfConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpfConfig").finish_non_exhaustive()
    }
}

/// A check's inputs: client address, sender (lower case), HELO name.
pub(super) type Key = (IpAddr, String, String);

pub(super) struct Shared {
    pub(super) authenticator: MessageAuthenticator,
    pub(super) config: SpfConfig,
    results: [Counter; 7],
    cache: Mutex<HashMap<Key, (SpfResult, Instant)>>,
}

impl Shared {
    /// A result still fresh for these inputs.
    pub(super) fn cached(&self, key: &Key) -> Option<SpfResult> {
        let cache = self.cache.lock().expect("spf cache");
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(result, _)| *result)
    }

    /// Keeps a result (not a temporary error) for `cache_ttl`.
    pub(super) fn remember(&self, key: Key, result: SpfResult) {
        if result == SpfResult::TempError || self.config.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("spf cache");
        if cache.len() >= self.config.max_cache {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.config.max_cache {
                cache.clear();
            }
        }
        cache.insert(key, (result, now + self.config.cache_ttl));
    }

    pub(super) fn count(&self, result: SpfResult) {
        let i = match result {
            SpfResult::Pass => 0,
            SpfResult::Fail => 1,
            SpfResult::SoftFail => 2,
            SpfResult::Neutral => 3,
            SpfResult::TempError => 4,
            SpfResult::PermError => 5,
            SpfResult::None => 6,
        };
        self.results[i].increment(1);
    }
}

/// Adds [`Spf`].
#[derive(Clone)]
pub struct SpfLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpfLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpfLayer").finish_non_exhaustive()
    }
}

impl SpfLayer {
    /// A layer with these settings.
    pub fn new(config: SpfConfig) -> Self {
        let result =
            |r: &'static str| metrics::counter!("attitude_spf_results_total", "result" => r);
        Self {
            shared: Arc::new(Shared {
                authenticator: MessageAuthenticator(config.resolver.clone()),
                results: [
                    result("pass"),
                    result("fail"),
                    result("softfail"),
                    result("neutral"),
                    result("temperror"),
                    result("permerror"),
                    result("none"),
                ],
                config,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for SpfLayer {
    type Service = Spf<S>;

    fn layer(&self, inner: S) -> Spf<S> {
        Spf::new(inner, self.shared.clone())
    }
}
