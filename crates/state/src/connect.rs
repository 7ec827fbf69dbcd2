//! Connecting: the URL and credentials, TLS with the system's roots or a CA file, Sentinel, and
//! the first contact. A Redis that cannot be reached at start is not fatal (attitude starts in
//! degraded mode and the connection manager keeps trying); one that refuses the credentials or
//! the TLS handshake, or a URL that does not parse, is a start-up error naming what to fix.

use std::sync::Arc;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::{Metrics, Redis, StateConfig, breaker::Breaker};

/// `[state]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The URL or a setting is wrong.
    #[error("[state] {0}")]
    Config(String),
    /// Redis answered, and refused us (credentials, TLS, a wrong server).
    #[error(
        "[state] Redis at {url} refused the connection: {error} (check the password, the user and the TLS settings)"
    )]
    Refused {
        /// The URL, without credentials.
        url: String,
        /// Redis's own words.
        error: String,
    },
}

impl Redis {
    /// Connects as `config` says (see the module docs for what is fatal).
    pub async fn connect(config: StateConfig) -> Result<Arc<Self>, StateError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(StateError::Config(
                "key_prefix must not contain braces: they are the keys' hash tags".into(),
            ));
        }
        let info = connection_info(&config)?;
        let shown = redacted(&config.url);
        let certs = certificates(&config)?;
        let client = if config.sentinels.is_empty() {
            build(info.clone(), certs)?
        } else if certs.is_some() {
            return Err(StateError::Config(
                "ca_file is for a Redis named by its URL; with sentinels, the master's certificate must be signed by a system root".into(),
            ));
        } else {
            master(&config, &info).await?
        };
        // Try once: a refusal is a start-up error; an unreachable server is degraded mode.
        let mut away: Option<String> = None;
        match tokio::time::timeout(
            config.connect_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(mut conn)) => {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if let Err(error) = pong {
                    return Err(StateError::Refused {
                        url: shown,
                        error: error.to_string(),
                    });
                }
                tracing::info!(url = %shown, prefix = %config.key_prefix, "shared state: Redis connected");
            }
            // Nobody listening (yet) or no answer is degraded mode; a refusal of any other kind
            // (credentials, an untrusted certificate, not a Redis) will not fix itself.
            Ok(Err(error)) if !error.is_connection_refusal() && !error.is_timeout() => {
                return Err(StateError::Refused {
                    url: shown,
                    error: error.to_string(),
                });
            }
            Ok(Err(error)) => away = Some(error.to_string()),
            Err(_) => away = Some("no answer within connect_timeout".into()),
        }
        // Checks the settings once: every thread's manager is made the same way.
        ConnectionManager::new_lazy_with_config(client.clone(), manager_config(&config))
            .map_err(|e| StateError::Config(e.to_string()))?;
        let redis = Arc::new(Redis {
            client: ArcSwap::from_pointee((0, client)),
            manager: manager_config(&config),
            id: crate::NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            releases: std::sync::Mutex::default(),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            breaker: Breaker::new(config.breaker.clone()),
            metrics: Metrics::register(),
            sentinel: (!config.sentinels.is_empty()).then_some(Sentinel { config, info }),
        });
        if let Some(why) = away {
            // Degraded from the start: no session asks it until the probe finds it.
            tracing::warn!(url = %shown, error = %why, "shared state: Redis unreachable at start");
            redis.breaker.open(&why);
            redis.probe();
        }
        Ok(redis)
    }

    /// With Sentinel: asks the sentinels for the master again (the circuit is open: the master
    /// may have moved) and uses it from now on.
    pub(crate) async fn rediscover(&self) {
        let Some(sentinel) = &self.sentinel else {
            return;
        };
        match master(&sentinel.config, &sentinel.info).await {
            Ok(client) => {
                let now = client.get_connection_info().addr().to_string();
                let before = self
                    .client
                    .load()
                    .1
                    .get_connection_info()
                    .addr()
                    .to_string();
                if now != before {
                    self.replace_client(client);
                    tracing::info!(master = %sentinel.config.master_name, was = %before, now = %now, "shared state: the sentinels name another master");
                }
            }
            Err(error) => tracing::warn!(%error, "shared state: the sentinels named no master"),
        }
    }
}

/// The connection manager's settings: its own timeouts and a short reconnect backoff (the
/// breaker's probe keeps trying beyond it).
fn manager_config(config: &StateConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.timeout))
        .set_connection_timeout(Some(config.connect_timeout))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_secs(1))
}

/// Sentinel settings kept for rediscovery.
pub(crate) struct Sentinel {
    config: StateConfig,
    info: ConnectionInfo,
}

fn connection_info(config: &StateConfig) -> Result<ConnectionInfo, StateError> {
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| StateError::Config(format!("redis = {:?}: {e}", redacted(&config.url))))?;
    let mut settings = info.redis_settings().clone();
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    Ok(info.set_redis_settings(settings))
}

fn certificates(config: &StateConfig) -> Result<Option<TlsCertificates>, StateError> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let root = std::fs::read(path)
        .map_err(|e| StateError::Config(format!("ca_file {}: {e}", path.display())))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(root),
    }))
}

fn build(info: ConnectionInfo, certs: Option<TlsCertificates>) -> Result<Client, StateError> {
    match certs {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
    .map_err(|e| StateError::Config(e.to_string()))
}

/// The master the sentinels name.
async fn master(config: &StateConfig, info: &ConnectionInfo) -> Result<Client, StateError> {
    let sentinels: Vec<String> = config
        .sentinels
        .iter()
        .map(|s| format!("redis://{s}"))
        .collect();
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone());
    if tls {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    let mut client = SentinelClient::build(
        sentinels,
        config.master_name.clone(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| StateError::Config(format!("sentinels: {e}")))?;
    match tokio::time::timeout(config.connect_timeout, client.async_get_client()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(StateError::Config(format!(
            "the sentinels {:?} named no master {:?}: {error}",
            config.sentinels, config.master_name
        ))),
        Err(_) => Err(StateError::Config(format!(
            "the sentinels {:?} did not answer within {:?}",
            config.sentinels, config.connect_timeout
        ))),
    }
}

/// The URL without its password, for logs and errors.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
