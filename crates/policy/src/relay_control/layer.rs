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

/// Relay control's verdict on one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A local domain, a trusted or authenticated client.
    Allow,
    /// Another domain from a client that may not relay.
    Relay,
    /// A routing form in the local part (`%`, `!`, a quoted `@`) from a client that may not
    /// relay.
    Routing,
}

/// Who may relay where.
#[derive(Debug, Clone)]
pub struct RelayControlConfig {
    /// Domains accepted from anyone, lower case; an entry starting with `.` matches every
    /// subdomain (`.example.com` matches `mx.example.com`, not `example.com`).
    pub local_domains: Vec<String>,
    /// Clients that may relay anywhere.
    pub trusted_networks: Vec<IpNet>,
    /// Accept routing forms in a local part (`user%remote@local`, `remote!user@local`,
    /// `"user@remote"@local`) from any client. Off by default: a backend that rewrites them
    /// (percent hack, bang paths) would relay for the world through attitude's side door.
    pub allow_routing: bool,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Metric handles.
    pub metrics: RelayControlMetrics,
}

impl RelayControlConfig {
    /// True when `client` may relay to `address`, or `authenticated` says so.
    pub fn allows(&self, client: IpAddr, authenticated: bool, address: &str) -> bool {
        self.decide(client, authenticated, address) == Decision::Allow
    }

    /// What relay control makes of `address` from `client`.
    pub fn decide(&self, client: IpAddr, authenticated: bool, address: &str) -> Decision {
        let client = canonical_ip(client);
        if authenticated || self.trusted_networks.iter().any(|n| n.contains(&client)) {
            return Decision::Allow;
        }
        if !self.allow_routing
            && address
                .rsplit_once('@')
                .is_some_and(|(local, _)| local.contains(['%', '!', '@']))
        {
            return Decision::Routing;
        }
        let local = match domain_of(address) {
            Some(domain) => self.is_local(&domain),
            // <postmaster> (RFC 5321 §4.5.1) is always local.
            None => address.eq_ignore_ascii_case("postmaster"),
        };
        if local {
            Decision::Allow
        } else {
            Decision::Relay
        }
    }

    fn is_local(&self, domain: &str) -> bool {
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
            allow_routing: false,
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

    #[test]
    fn routing_forms_need_a_client_that_may_relay() {
        let mut c = config();
        let outsider: IpAddr = "198.51.100.7".parse().unwrap();
        // The parser hands `"user@remote"@example.com` over unquoted.
        for form in [
            "user%remote.org@example.com",
            "remote.org!user@example.com",
            "user@remote.org@example.com",
        ] {
            assert_eq!(c.decide(outsider, false, form), Decision::Routing, "{form}");
            assert_eq!(c.decide(outsider, true, form), Decision::Allow, "{form}");
            assert_eq!(
                c.decide("192.0.2.1".parse().unwrap(), false, form),
                Decision::Allow
            );
        }
        // IDN: the U-label and the A-label of a local domain are one domain.
        c.local_domains = vec!["xn--bcher-kva.example".into()];
        assert_eq!(
            c.decide(outsider, false, "a@bücher.example"),
            Decision::Allow
        );
        c.allow_routing = true;
        assert_eq!(
            c.decide(outsider, false, "user%remote.org@xn--bcher-kva.example"),
            Decision::Allow
        );
    }
}
