use std::sync::Arc;
use std::time::Duration;

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
    /// Refuse `fail` (otherwise only count it).
    pub reject_fail: bool,
    /// How long one check may take (then it counts as `temperror` and passes).
    pub timeout: Duration,
    /// Clients never checked.
    pub trusted_networks: Vec<IpNet>,
    /// `policy="spf"` decisions.
    pub decisions: Decisions,
}

pub(super) struct Shared {
    pub(super) authenticator: MessageAuthenticator,
    pub(super) config: SpfConfig,
    results: [Counter; 7],
}

impl Shared {
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
