//! `[[listeners]]`: several listeners, each with its TLS mode, PROXY requirement and policy
//! overrides; the effective configuration of each, and the trust-boundary guard.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, file};

/// TLS on a listener.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ListenerTls {
    /// Never (STARTTLS is not offered).
    None,
    /// STARTTLS offered (port 25, 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// A listener's address, or several (`["0.0.0.0:25", "[::]:25"]` for both families: an IPv6
/// socket is bound IPv6-only, so the two bind side by side).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum Addresses {
    /// One address.
    One(SocketAddr),
    /// Several: one socket each, the same listener.
    Many(Vec<SocketAddr>),
}

impl Addresses {
    /// Every address.
    pub(crate) fn all(&self) -> Vec<SocketAddr> {
        match self {
            Addresses::One(a) => vec![*a],
            Addresses::Many(v) => v.clone(),
        }
    }
}

/// `[[listeners]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// Name in logs and errors (`mx`, `submission`, `submissions`).
    pub name: String,
    /// Listen address, or addresses.
    pub address: Addresses,
    /// `"none"`, `"starttls"` or `"implicit"` (default: `"starttls"` when `[tls]` has a
    /// certificate, else `"none"`).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Expect a PROXY header on every connection (default: `[proxy_protocol] enabled`).
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    /// Sections merged over the top-level ones for this listener's sessions, e.g.
    /// `policy.auth = { require = true }`.
    #[serde(default)]
    pub policy: toml::Table,
}

/// Top-level keys a listener's `policy` may not override: they belong to the process.
const PROCESS_KEYS: &[&str] = &[
    "listen",
    "listeners",
    "tls",
    "admin",
    "workers",
    "backend",
    "pools",
    "state",
    "stress",
    "dns",
    "log",
    "proxy_protocol",
];

/// One listener as it runs: its address, TLS, PROXY, and its whole effective configuration.
#[derive(Debug, Clone)]
pub(crate) struct EffectiveListener {
    /// Name.
    pub name: String,
    /// Addresses (at least one).
    pub addresses: Vec<SocketAddr>,
    /// TLS mode.
    pub tls: ListenerTls,
    /// PROXY protocol in.
    pub proxy_protocol: bool,
    /// The configuration with the listener's `policy` merged in.
    pub config: Config,
}

impl EffectiveListener {
    /// The Mailu open relay: behind a load balancer that hides the client, every client comes
    /// from the balancer, and a trusted balancer network trusts everyone. Refused unless the
    /// listener requires PROXY headers.
    fn trust_boundary(&self) -> Result<(), ConfigError> {
        if self.proxy_protocol {
            return Ok(());
        }
        let overlap = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let c = &self.config;
        for lb in &c.proxy_protocol.sources {
            if let Some(trusted) = c.relay.trusted_networks.iter().find(|t| overlap(t, lb)) {
                return Err(ConfigError::Invalid(format!(
                    "listener {}: [relay] trusted_networks has {trusted}, which holds the load \
                     balancer's {lb} ([proxy_protocol] sources), but this listener does not \
                     require PROXY protocol: every client would come from the balancer and relay \
                     anywhere (an open relay). Set [proxy_protocol] enabled = true (or the \
                     listener's proxy_protocol = true), or take the balancer's network out of \
                     trusted_networks",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The listeners as they run, each checked against the trust boundary.
    pub(crate) fn effective_listeners(&self) -> Result<Vec<EffectiveListener>, ConfigError> {
        let listeners = self.listeners_unchecked()?;
        for l in &listeners {
            l.trust_boundary()?;
        }
        Ok(listeners)
    }

    /// The listeners as they run: `[[listeners]]`, or one from `listen`. Each carries the
    /// configuration its sessions use, validated, with its `policy` merged in.
    fn listeners_unchecked(&self) -> Result<Vec<EffectiveListener>, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let default_tls = if self.tls.cert.is_some() {
            ListenerTls::Starttls
        } else {
            ListenerTls::None
        };
        if self.listeners.is_empty() {
            if self.smtp.require_tls && default_tls != ListenerTls::Starttls {
                return Err(invalid(
                    "[smtp] require_tls needs STARTTLS: set [tls] cert and key".into(),
                ));
            }
            return Ok(vec![EffectiveListener {
                name: "smtp".into(),
                addresses: vec![self.listen],
                tls: default_tls,
                proxy_protocol: self.proxy_protocol.enabled,
                config: self.clone(),
            }]);
        }
        let mut base = toml::Table::try_from(self)
            .map_err(|e| invalid(format!("cannot merge listener policies: {e}")))?;
        base.remove("listeners");
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for l in &self.listeners {
            let name = &l.name;
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(invalid(format!(
                    "[[listeners]] name {name:?} must be non-empty and unique"
                )));
            }
            if let Some(key) = l.policy.keys().find(|k| PROCESS_KEYS.contains(&k.as_str())) {
                return Err(invalid(format!(
                    "[[listeners]] {name}: policy.{key} cannot differ per listener (it belongs to \
                     the whole process); set it at the top level"
                )));
            }
            if let Some(toml::Value::Table(g)) = l.policy.get("greylist")
                && let Some(key) = g.keys().find(|k| k.as_str() != "enabled")
            {
                return Err(invalid(format!(
                    "[[listeners]] {name}: policy.greylist.{key}: the greylist store is shared, \
                     so a listener may only set `enabled`; set {key} in [greylist]"
                )));
            }
            let mut merged = base.clone();
            file::merge(&mut merged, &l.policy);
            let config: Config = merged.try_into().map_err(|e: toml::de::Error| {
                invalid(format!(
                    "[[listeners]] {name}: policy: {}",
                    e.message().trim()
                ))
            })?;
            config
                .validate_one()
                .map_err(|e| invalid(format!("[[listeners]] {name}: {e}")))?;
            let tls = l.tls.unwrap_or(default_tls);
            if tls != ListenerTls::None && self.tls.cert.is_none() {
                return Err(invalid(format!(
                    "[[listeners]] {name}: tls = \"{}\" needs a certificate: set [tls] cert and \
                     key (or --tls-cert and --tls-key)",
                    if tls == ListenerTls::Implicit {
                        "implicit"
                    } else {
                        "starttls"
                    }
                )));
            }
            if config.smtp.require_tls && tls != ListenerTls::Starttls {
                return Err(invalid(format!(
                    "[[listeners]] {name}: smtp.require_tls needs tls = \"starttls\" (an \
                     implicit-TLS listener is always encrypted; a plain one never)"
                )));
            }
            let addresses = l.address.all();
            if addresses.is_empty() {
                return Err(invalid(format!(
                    "[[listeners]] {name}: address = [] listens nowhere; give at least one"
                )));
            }
            out.push(EffectiveListener {
                name: name.clone(),
                addresses,
                tls,
                proxy_protocol: l.proxy_protocol.unwrap_or(self.proxy_protocol.enabled),
                config,
            });
        }
        let mut taken: Vec<(SocketAddr, &str)> = Vec::new();
        for l in &out {
            for addr in &l.addresses {
                // Port 0 (tests) picks a free port for each.
                if let Some((_, other)) = taken.iter().find(|(a, _)| a == addr && addr.port() != 0)
                {
                    return Err(invalid(format!(
                        "[[listeners]] {other} and {} both listen on {addr}",
                        l.name
                    )));
                }
                taken.push((*addr, &l.name));
            }
        }
        Ok(out)
    }
}
