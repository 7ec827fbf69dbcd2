use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attitude_service::address::canonical_ip;
use attitude_service::driver::DriverMetrics;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use metrics::Counter;
use tower_layer::Layer;

use super::{DnsblService, Zone};
use crate::Decisions;
use crate::fleet::VerdictTable;

/// DNSBL settings.
pub struct DnsblConfig {
    /// The lists.
    pub zones: Vec<Zone>,
    /// Refused at or over this score.
    pub threshold: i32,
    /// Exempt from the other checks at or under this score.
    pub allowlist_threshold: i32,
    /// The resolver (see [`crate::dns::resolver`]; shared with SPF).
    pub resolver: TokioResolver,
    /// How long the lookups of one client may take together.
    pub timeout: Duration,
    /// How long a score is reused.
    pub cache_ttl: Duration,
    /// Most scores cached.
    pub max_cache: usize,
    /// Enforce or dry-run (a listed client is counted and logged, then served).
    pub mode: attitude_layers::Mode,
    /// `policy="dnsbl"` decisions.
    pub decisions: Decisions,
    /// Refusals count as refused sessions.
    pub sessions: Arc<DriverMetrics>,
    /// The fleet's scores for these zones (`[state] redis`): a client scored on any replica is
    /// not looked up again by the others.
    pub fleet: Option<VerdictTable>,
}

impl std::fmt::Debug for DnsblConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblConfig").finish_non_exhaustive()
    }
}

/// A client's score and who listed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Score {
    /// The sum of the weights of the zones that list the client.
    pub total: i32,
    /// The zones that list it.
    pub listed_by: Vec<String>,
    /// Zones that did not answer in time (they count as not listing).
    pub errors: usize,
}

impl Score {
    /// As the fleet's store keeps it: the total, a tab, the listing zones.
    fn encode(&self) -> String {
        format!("{}\t{}", self.total, self.listed_by.join(","))
    }

    fn decode(text: &str) -> Option<Score> {
        let (total, zones) = text.split_once('\t')?;
        Some(Score {
            total: total.parse().ok()?,
            listed_by: zones
                .split(',')
                .filter(|z| !z.is_empty())
                .map(str::to_owned)
                .collect(),
            errors: 0,
        })
    }
}

struct ZoneMetrics {
    listed: Counter,
    clean: Counter,
    error: Counter,
}

/// Complete scores by client address, until when. A score means something only for the zones
/// and weights it was computed with: the process keeps one cache per zone list (see
/// [`DnsblCache::key`]), shared by every listener and configuration that uses that list.
#[derive(Default)]
pub struct DnsblCache {
    scores: Mutex<HashMap<IpAddr, (Score, Instant)>>,
}

impl std::fmt::Debug for DnsblCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblCache").finish_non_exhaustive()
    }
}

impl DnsblCache {
    /// What a cache is for: the zones with their weights and match rules, as configured.
    pub fn key(zones: &[String]) -> String {
        zones.join(" ")
    }
}

/// The resolver, the zones and the cache, shared by every session.
pub struct Dnsbl {
    pub(super) config: DnsblConfig,
    resolver: TokioResolver,
    cache: Arc<DnsblCache>,
    zone_metrics: Vec<ZoneMetrics>,
    cache_hits: Counter,
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsbl").finish_non_exhaustive()
    }
}

impl Dnsbl {
    /// The zones' state, with metric handles registered, and a cache of its own.
    pub fn new(config: DnsblConfig) -> Self {
        Self::sharing(config, Arc::default())
    }

    /// As [`Dnsbl::new`], over `cache` (shared by others with the same zones).
    pub fn sharing(config: DnsblConfig, cache: Arc<DnsblCache>) -> Self {
        let zone_metrics = config
            .zones
            .iter()
            .map(|zone| {
                let result = |r: &'static str| {
                    metrics::counter!("attitude_dnsbl_lookups_total", "zone" => zone.name.clone(), "result" => r)
                };
                ZoneMetrics {
                    listed: result("listed"),
                    clean: result("not_listed"),
                    error: result("error"),
                }
            })
            .collect();
        Self {
            resolver: config.resolver.clone(),
            config,
            cache,
            zone_metrics,
            cache_hits: metrics::counter!("attitude_dnsbl_cache_hits_total"),
        }
    }

    /// The score of `ip`: from the cache, or from every zone at once.
    pub async fn score(&self, ip: IpAddr) -> Score {
        let ip = canonical_ip(ip);
        if let Some((score, until)) = self.cache.scores.lock().expect("dnsbl cache").get(&ip)
            && *until > Instant::now()
        {
            self.cache_hits.increment(1);
            return score.clone();
        }
        let fleet = self.config.fleet.as_ref();
        if let Some(fleet) = fleet
            && let Some((value, left)) = fleet.get(&ip.to_string()).await
            && let Some(score) = Score::decode(&value)
        {
            self.cache_hits.increment(1);
            self.keep(ip, &score, left);
            return score;
        }
        let lookups = self.config.zones.iter().zip(&self.zone_metrics).map(|(zone, m)| async move {
            let name = zone.query(ip);
            match tokio::time::timeout(self.config.timeout, self.resolver.ipv4_lookup(name)).await {
                Ok(Ok(lookup)) => {
                    let listed = lookup.answers().iter().any(|r| match &r.data {
                        RData::A(a) => zone.counts(a.0),
                        _ => false,
                    });
                    if listed { m.listed.increment(1) } else { m.clean.increment(1) }
                    Some(listed)
                }
                Ok(Err(e)) if e.is_no_records_found() => {
                    m.clean.increment(1);
                    Some(false)
                }
                Ok(Err(error)) => {
                    m.error.increment(1);
                    tracing::warn!(zone = %zone.name, %error, "DNSBL lookup failed");
                    None
                }
                Err(_elapsed) => {
                    m.error.increment(1);
                    tracing::warn!(zone = %zone.name, timeout = ?self.config.timeout, "DNSBL lookup timed out");
                    None
                }
            }
        });
        let results = futures::future::join_all(lookups).await;
        let mut score = Score::default();
        for (zone, result) in self.config.zones.iter().zip(results) {
            match result {
                Some(true) => {
                    score.total += zone.weight;
                    score.listed_by.push(zone.name.clone());
                }
                Some(false) => {}
                None => score.errors += 1,
            }
        }
        if score.errors == 0 {
            // A score with failed lookups is not kept: the next connection asks again.
            self.keep(ip, &score, self.config.cache_ttl);
            if let Some(fleet) = fleet {
                fleet.put(&ip.to_string(), score.encode(), self.config.cache_ttl);
            }
        }
        score
    }

    fn keep(&self, ip: IpAddr, score: &Score, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache.scores.lock().expect("dnsbl cache");
        if cache.len() >= self.config.max_cache {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.config.max_cache {
                cache.clear();
            }
        }
        cache.insert(ip, (score.clone(), now + ttl));
    }
}

/// Adds [`DnsblService`].
#[derive(Clone)]
pub struct DnsblLayer {
    dnsbl: Arc<Dnsbl>,
}

impl std::fmt::Debug for DnsblLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblLayer").finish_non_exhaustive()
    }
}

impl DnsblLayer {
    /// A layer over a shared [`Dnsbl`].
    pub fn new(dnsbl: Arc<Dnsbl>) -> Self {
        Self { dnsbl }
    }
}

impl<S> Layer<S> for DnsblLayer {
    type Service = DnsblService<S>;

    fn layer(&self, inner: S) -> DnsblService<S> {
        DnsblService::new(inner, self.dnsbl.clone())
    }
}
