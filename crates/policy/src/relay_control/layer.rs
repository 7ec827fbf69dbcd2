use std::net::IpAddr;
use std::sync::Arc;

use attitude_layers::Mode;
use ipnet::IpNet;
use metrics::Counter;
use tower_layer::Layer;

use super::RelayControl;
use attitude_service::address::{canonical_ip, domain_of};

/// `attitude_policy_decisions_total{policy="relay",action}` handles.
#[derive(Debug, Clone)]
pub struct RelayControlMetrics {
    /// A recipient allowed (local domain, trusted network or authenticated).
    pub allowed: Counter,
    /// A recipient refused.
    pub rejected: Counter,
    /// A recipient a dry-run rule would have refused.
    pub would_reject: Counter,
}

impl RelayControlMetrics {
    /// Registers the handles with the installed `metrics` recorder.
    pub fn register() -> Self {
        let action = |a: &'static str| metrics::counter!("attitude_policy_decisions_total", "policy" => "relay", "action" => a);
        Self {
            allowed: action("allow"),
            rejected: action("reject"),
            would_reject: action("would_reject"),
        }
    }
}

/// Who may relay where.
#[derive(Debug, Clone)]
pub struct RelayControlConfig {
    /// Domains accepted from anyone, lower case; an entry starting with `.` matches every
    /// subdomain (`.example.com` matches `mx.example.com`, not `example.com`).
    pub local_domains: Vec<String>,
    /// Clients that may relay anywhere.
    pub trusted_networks: Vec<IpNet>,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Metric handles.
    pub metrics: RelayControlMetrics,
}

impl RelayControlConfig {
    /// True when `client` may relay to `address`, or `authenticated` says so.
    pub fn allows(&self, client: IpAddr, authenticated: bool, address: &str) -> bool {
        let client = canonical_ip(client);
        if authenticated || self.trusted_networks.iter().any(|n| n.contains(&client)) {
            return true;
        }
        let Some(domain) = domain_of(address) else {
            // <postmaster> (RFC 5321 §4.5.1) is always local.
            return address.eq_ignore_ascii_case("postmaster");
        };
        self.local_domains
            .iter()
            .any(|local| match local.strip_prefix('.') {
                Some(parent) => domain
                    .strip_suffix(parent)
                    .is_some_and(|head| head.ends_with('.')),
                None => *local == domain,
            })
    }
}

/// Adds [`RelayControl`].
#[derive(Debug, Clone)]
pub struct RelayControlLayer {
    config: Arc<RelayControlConfig>,
}

impl RelayControlLayer {
    /// A layer with this configuration.
    pub fn new(config: RelayControlConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for RelayControlLayer {
    type Service = RelayControl<S>;

    fn layer(&self, inner: S) -> RelayControl<S> {
        RelayControl::new(inner, self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayControlConfig {
        RelayControlConfig {
            local_domains: vec!["example.com".into(), ".example.net".into()],
            trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
            mode: Mode::Enforce,
            metrics: RelayControlMetrics {
                allowed: Counter::noop(),
                rejected: Counter::noop(),
                would_reject: Counter::noop(),
            },
        }
    }

    #[test]
    fn local_trusted_authenticated() {
        let c = config();
        let outsider: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(c.allows(outsider, false, "a@Example.COM"));
        assert!(c.allows(outsider, false, "a@mx.example.net"));
        assert!(!c.allows(outsider, false, "a@example.net"));
        assert!(!c.allows(outsider, false, "a@notexample.com"));
        assert!(!c.allows(outsider, false, "a@example.com.evil.org"));
        assert!(!c.allows(outsider, false, "a@elsewhere.org"));
        assert!(c.allows(outsider, false, "postmaster"));
        assert!(c.allows(outsider, true, "a@elsewhere.org"));
        assert!(c.allows("192.0.2.9".parse().unwrap(), false, "a@elsewhere.org"));
        assert!(c.allows(
            "::ffff:192.0.2.9".parse().unwrap(),
            false,
            "a@elsewhere.org"
        ));
    }
}
