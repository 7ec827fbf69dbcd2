//! `[[pools]]`, `[[routes]]` and `[routing]`: several backend pools behind one front door, and
//! which recipient domains go to which (see docs/operations.md, "Routes").

use std::path::PathBuf;

use attitude_policy::access::Matcher;
use serde::{Deserialize, Serialize};

use super::{Backend, Config, ConfigError, file};

/// The name of the pool `[backend]` describes.
pub(crate) const DEFAULT_POOL: &str = "default";

/// `[[pools]]`: a named pool, with every key of `[backend]` (read through a table: serde's
/// `flatten` would let a misspelt key pass).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "toml::Table")]
pub(crate) struct NamedPool {
    /// The name routes give (`exchange`, `postfix`).
    pub name: String,
    /// `/readyz` is ready only while this pool has a backend up (the default pool always
    /// counts).
    #[serde(default)]
    pub required: bool,
    /// Servers, discovery, health checks, reuse, identity, TLS: as in `[backend]`.
    #[serde(flatten)]
    pub backend: Backend,
}

impl TryFrom<toml::Table> for NamedPool {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            _ => return Err("[[pools]] needs a name = \"...\"".into()),
        };
        let required = match table.remove("required") {
            None => false,
            Some(toml::Value::Boolean(required)) => required,
            Some(_) => return Err(format!("[[pools]] {name}: required is true or false")),
        };
        let backend = Backend::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("[[pools]] {name}: {}", e.message()))?;
        Ok(Self {
            name,
            required,
            backend,
        })
    }
}

/// `[[routes]]`: recipient domains and the pool their mail goes to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Recipient domains: `example.com`, `.example.com` (its subdomains), `/regex/` (over the
    /// domain, case-insensitive).
    #[serde(default)]
    pub domains: Vec<String>,
    /// More domains from a file, one per line (`#` starts a comment), read at start and at
    /// every reload.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The pool: `"default"` (`[backend]`) or a `[[pools]]` name.
    pub pool: String,
    /// Message size limit of this route's transactions, in octets (below `[limits]
    /// max_message_size`, which EHLO announces).
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// Greylist this route's recipients (when `[greylist]` is on).
    #[serde(default = "yes")]
    pub greylist: bool,
}

fn yes() -> bool {
    true
}

/// What a recipient no route matches gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Unrouted {
    /// The default pool.
    #[default]
    Default,
    /// `550 5.1.2` (a recipient without a domain, like `<postmaster>`, still goes to the
    /// default pool).
    Reject,
}

/// `[routing]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Routing {
    /// `"default"` or `"reject"`.
    pub unrouted: Unrouted,
}

/// One route, its domains read and compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRoute {
    /// Matches the recipient's domain.
    pub matcher: Matcher,
    /// The pool's name.
    pub pool: String,
    /// The route's size limit.
    pub max_message_size: Option<u64>,
    /// Greylisting applies.
    pub greylist: bool,
}

impl Config {
    /// Every pool: `default` (`[backend]`) first, then `[[pools]]`, with whether readiness
    /// needs it.
    pub(crate) fn pool_sections(&self) -> impl Iterator<Item = (&str, bool, &Backend)> {
        std::iter::once((DEFAULT_POOL, true, &self.backend)).chain(
            self.pools
                .iter()
                .map(|p| (p.name.as_str(), p.required, &p.backend)),
        )
    }

    /// Whether a recipient's pool depends on its domain (routes, or unrouted domains refused).
    pub(crate) fn routed(&self) -> bool {
        !self.routes.is_empty() || self.routing.unrouted == Unrouted::Reject
    }

    /// The routes, their files read; an error names the route and what to fix.
    pub(crate) fn compiled_routes(&self) -> Result<Vec<CompiledRoute>, ConfigError> {
        self.routes
            .iter()
            .enumerate()
            .map(|(n, route)| route.compile(&format!("[[routes]] #{} ({})", n + 1, route.pool)))
            .collect::<Result<_, String>>()
            .map_err(ConfigError::Invalid)
    }

    pub(super) fn validate_routes(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (i, pool) in self.pools.iter().enumerate() {
            if pool.name.is_empty()
                || !pool
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return invalid(format!(
                    "[[pools]] #{}: name {:?}: use letters, digits, - and _",
                    i + 1,
                    pool.name
                ));
            }
            if pool.name == DEFAULT_POOL || self.pools[..i].iter().any(|p| p.name == pool.name) {
                return invalid(format!(
                    "[[pools]] name {:?} is taken ({DEFAULT_POOL:?} is [backend]); give each pool \
                     its own name",
                    pool.name
                ));
            }
            pool.backend
                .validate()
                .and_then(|()| pool.backend.tls.validate())
                .map_err(|e| ConfigError::Invalid(format!("[[pools]] {}: {e}", pool.name)))?;
        }
        let routes = self.compiled_routes()?;
        for (route, config) in routes.iter().zip(&self.routes) {
            if !self.pool_sections().any(|(name, _, _)| name == route.pool) {
                return invalid(format!(
                    "[[routes]] pool {:?} is not a pool: name {DEFAULT_POOL:?} or one of \
                     [[pools]]",
                    route.pool
                ));
            }
            if let Some(limit) = config.max_message_size
                && (limit == 0 || limit > self.limits.max_message_size)
            {
                return invalid(format!(
                    "[[routes]] ({}) max_message_size {limit}: give 1 to [limits] \
                     max_message_size ({}), which EHLO announces",
                    route.pool, self.limits.max_message_size
                ));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    fn compile(&self, name: &str) -> Result<CompiledRoute, String> {
        let domains = file::values(&self.domains, self.file.as_deref(), name)?;
        if domains.is_empty() {
            return Err(format!("{name}: no domains (set `domains` or `file`)"));
        }
        if let Some(bad) = domains
            .iter()
            .find(|d| !d.starts_with('/') && d.contains('@'))
        {
            return Err(format!(
                "{name}: {bad:?} is an address; a route matches domains (\"example.com\", \
                 \".example.com\" or \"/regex/\")"
            ));
        }
        let matcher = Matcher::names(domains.iter().map(String::as_str))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(CompiledRoute {
            matcher,
            pool: self.pool.clone(),
            max_message_size: self.max_message_size,
            greylist: self.greylist,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_POOLS: &str = r#"
        [backend]
        servers = ["127.0.0.1:2526"]
        [[pools]]
        name = "postfix"
        servers = ["127.0.0.1:2527", { address = "127.0.0.1:2528", weight = 2 }]
        required = true
        health = { enabled = false }
        [[routes]]
        domains = ["a.example", ".a.example"]
        pool = "postfix"
        max_message_size = 1000000
        greylist = false
    "#;

    #[test]
    fn pools_take_every_backend_key() {
        let config = Config::parse(TWO_POOLS, "test").unwrap();
        config.validate().unwrap();
        let pools: Vec<_> = config.pool_sections().map(|(n, r, _)| (n, r)).collect();
        assert_eq!(pools, [("default", true), ("postfix", true)]);
        assert!(!config.pools[0].backend.health.enabled);
        assert_eq!(config.pools[0].backend.static_backends().len(), 2);
        assert!(config.routed());
        let routes = config.compiled_routes().unwrap();
        assert!(routes[0].matcher.value("mx.a.example"));
        assert!(!routes[0].greylist);
        // The effective configuration prints them and reads back the same.
        let again = Config::parse(&config.to_toml(), "printed").unwrap();
        assert_eq!(again.to_toml(), config.to_toml());
    }

    #[test]
    fn mistakes_say_what_to_fix() {
        let error = |text: &str| match Config::parse(text, "test").and_then(|c| c.validate()) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted: {text}"),
        };
        let base = "[backend]\nservers = [\"127.0.0.1:2526\"]\n";
        let e = error(&format!(
            "{base}[[pools]]\nname = \"p\"\nservers = [\"127.0.0.1:1\"]\nhelth = {{}}\n"
        ));
        assert!(e.contains("helth"), "{e}");
        let e = error(&format!("{base}[[pools]]\nname = \"p\"\n"));
        assert!(e.contains("[[pools]] p") && e.contains("no backend"), "{e}");
        let e = error(&format!(
            "{base}[[pools]]\nname = \"default\"\nservers = [\"127.0.0.1:1\"]\n"
        ));
        assert!(e.contains("taken"), "{e}");
        let e = error(&format!(
            "{base}[[routes]]\ndomains = [\"a.example\"]\npool = \"nope\"\n"
        ));
        assert!(e.contains("\"nope\" is not a pool"), "{e}");
        let e = error(&format!("{base}[[routes]]\npool = \"default\"\n"));
        assert!(e.contains("no domains"), "{e}");
        let e = error(&format!(
            "{base}[[routes]]\ndomains = [\"user@a.example\"]\npool = \"default\"\n"
        ));
        assert!(e.contains("is an address"), "{e}");
        let e = error(&format!(
            "{base}[[routes]]\ndomains = [\"a.example\"]\npool = \"default\"\nmax_message_size = 0\n"
        ));
        assert!(e.contains("max_message_size"), "{e}");
        let e = error(&format!(
            "{base}[[routes]]\nfile = \"/nonexistent/routes\"\npool = \"default\"\n"
        ));
        assert!(e.contains("cannot read file /nonexistent/routes"), "{e}");
        let e = error(&format!(
            "{base}[[listeners]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\npolicy.pools = []\n"
        ));
        assert!(e.contains("pools"), "{e}");
    }
}
