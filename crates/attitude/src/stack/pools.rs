//! The process's backend pools: `default` (`[backend]`) and each of `[[pools]]`, built once and
//! kept across reloads. A reload starts a new pool, stops a removed one (its transactions in
//! flight finish) and replaces one whose settings changed; a pool whose only change is its
//! static servers keeps running with the new list. It is staged first (new pools started, the
//! stacks built over them), then committed, or aborted when the new stacks cannot be built.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use attitude_balance::{Backend, BackendCaps, BackendSpec, CapsHook, DnsSource, Pool};
use attitude_service::auth::AuthOffer;
use hickory_resolver::TokioResolver;

use crate::config::{self, Config};

/// One running pool.
pub(crate) struct Named {
    /// Its name (`default` for `[backend]`).
    pub name: String,
    /// Readiness needs a backend of it up.
    pub required: bool,
    /// Its settings other than the static servers, to tell a changed pool on reload.
    settings: String,
    /// Its static servers (set when a reload is committed).
    servers: Vec<BackendSpec>,
    /// Its DNS sources (looked up from when it starts).
    dns: Vec<DnsSource>,
    /// The pool.
    pub pool: Pool,
}

/// Every pool of the process.
pub(crate) struct Pools {
    current: ArcSwap<Vec<Named>>,
    /// A reload's pools while its stacks are built.
    staged: Mutex<Option<Arc<Vec<Named>>>>,
    /// What the default pool's backends offer for AUTH (AUTH is relayed to the default pool).
    auth: Arc<AuthOffer>,
}

impl Pools {
    /// The pools of `config`, not started yet ([`Pools::start`]).
    pub(crate) fn new(config: &Config, auth: Arc<AuthOffer>) -> Result<Self, String> {
        let pools = Self {
            current: ArcSwap::from_pointee(Vec::new()),
            staged: Mutex::default(),
            auth,
        };
        let built = config
            .pool_sections()
            .map(|(name, required, b)| pools.build(config, name, required, b))
            .collect::<Result<Vec<_>, _>>()?;
        pools.current.store(Arc::new(built));
        Ok(pools)
    }

    fn build(
        &self,
        config: &Config,
        name: &str,
        required: bool,
        backend: &config::Backend,
    ) -> Result<Named, String> {
        let on_caps: Option<CapsHook> = (name == config::DEFAULT_POOL).then(|| {
            let auth = self.auth.clone();
            Arc::new(move |caps: &BackendCaps| auth.set_backend(caps.auth_mechanisms())) as CapsHook
        });
        let pool = Pool::new(
            config
                .pool_config(name, backend)
                .map_err(|e| format!("pool {name}: {e}"))?,
            on_caps,
        );
        let servers = backend.static_backends();
        pool.set_source("static", servers.clone());
        Ok(Named {
            name: name.to_owned(),
            required,
            settings: settings(config, backend),
            servers,
            dns: backend.dns_backends(),
            pool,
        })
    }

    /// Starts every pool not started yet: DNS discovery (with `resolver`), the controller,
    /// health checks.
    pub(crate) fn start(&self, resolver: Option<&TokioResolver>) {
        for named in self.current.load().iter() {
            start(named, resolver);
        }
    }

    /// Stages a reloaded configuration's pools (see the module docs): new and changed pools
    /// start now, with `resolver` for their DNS discovery, and [`Pools::get`] finds them, so
    /// the stacks that route to them can be built; nothing else sees them until
    /// [`Pools::commit`]. [`Pools::abort`] stops what was started.
    pub(crate) fn stage(
        &self,
        config: &Config,
        resolver: Option<&TokioResolver>,
    ) -> Result<(), String> {
        let old = self.current.load_full();
        let mut next = Vec::new();
        for (name, required, backend) in config.pool_sections() {
            let wanted = settings(config, backend);
            let kept = old.iter().find(|n| n.name == name && n.settings == wanted);
            let named = match kept {
                Some(kept) => Named {
                    name: kept.name.clone(),
                    required,
                    settings: wanted,
                    servers: backend.static_backends(),
                    dns: kept.dns.clone(),
                    pool: kept.pool.clone(),
                },
                None => match self.build(config, name, required, backend) {
                    Ok(built) => {
                        start(&built, resolver);
                        built
                    }
                    Err(error) => {
                        stop_new(&old, &next);
                        return Err(error);
                    }
                },
            };
            next.push(named);
        }
        *self.staged.lock().expect("staged lock") = Some(Arc::new(next));
        Ok(())
    }

    /// Makes the staged pools the process's: kept pools get their new static servers, replaced
    /// and removed ones stop (their transactions in flight finish).
    pub(crate) fn commit(&self) {
        let Some(next) = self.staged.lock().expect("staged lock").take() else {
            return;
        };
        let old = self.current.swap(next.clone());
        for named in next.iter() {
            named.pool.set_source("static", named.servers.clone());
            if !old.iter().any(|o| o.pool.same(&named.pool)) {
                tracing::info!(pool = %named.name, "backend pool started");
            }
        }
        for gone in old.iter() {
            if !next.iter().any(|n| n.pool.same(&gone.pool)) {
                tracing::info!(pool = %gone.name, "backend pool replaced or removed; its transactions in flight finish");
                gone.pool.stop();
            }
        }
    }

    /// Drops the staged pools (the reload was refused): those it started stop.
    pub(crate) fn abort(&self) {
        if let Some(next) = self.staged.lock().expect("staged lock").take() {
            stop_new(&self.current.load(), &next);
        }
    }

    /// The pool named `name` (a staged one while a reload builds its stacks).
    pub(crate) fn get(&self, name: &str) -> Option<Pool> {
        let find = |pools: &[Named]| {
            pools
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.pool.clone())
        };
        match self.staged.lock().expect("staged lock").as_ref() {
            Some(staged) => find(staged),
            None => find(&self.current.load()),
        }
    }

    /// Some pool has a backend up (else new clients get 421 at the greeting).
    pub(crate) fn available(&self) -> bool {
        self.current.load().iter().any(|n| n.pool.available())
    }

    /// The pools readiness needs (default, and those marked `required`) that have no backend
    /// up; empty when ready.
    pub(crate) fn unready(&self) -> Vec<String> {
        self.current
            .load()
            .iter()
            .filter(|n| n.required && !n.pool.available())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Every backend of every pool.
    pub(crate) fn backends(&self) -> Vec<Arc<Backend>> {
        self.current
            .load()
            .iter()
            .flat_map(|n| n.pool.backends())
            .collect()
    }

    /// Waits until the first health checks of every pool that has them are in, each pool at
    /// most its health check timeout.
    pub(crate) async fn settle(&self) {
        let pools: Vec<Pool> = self
            .current
            .load()
            .iter()
            .map(|n| n.pool.clone())
            .filter(|p| p.config().health.enabled)
            .collect();
        futures::future::join_all(pools.iter().map(|p| p.settle(p.config().health.timeout))).await;
    }
}

/// Stops the pools of `next` that `old` does not hold.
fn stop_new(old: &[Named], next: &[Named]) {
    next.iter()
        .filter(|n| !old.iter().any(|o| o.pool.same(&n.pool)))
        .for_each(|n| n.pool.stop());
}

fn start(named: &Named, resolver: Option<&TokioResolver>) {
    if let Some(resolver) = resolver {
        for source in &named.dns {
            named.pool.discover_dns(resolver.clone(), source.clone());
        }
    }
    named.pool.start();
}

/// What makes a pool the same on reload: its section without the static servers, and the
/// top-level values its settings take (`[timeouts]`, hostname).
fn settings(config: &Config, backend: &config::Backend) -> String {
    let mut section = backend.clone();
    section.servers.clear();
    format!(
        "{}{}{}",
        toml::to_string(&section).unwrap_or_default(),
        toml::to_string(&config.timeouts).unwrap_or_default(),
        config.hostname
    )
}
