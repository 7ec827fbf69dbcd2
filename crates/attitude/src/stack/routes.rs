//! A listener's routes as the relay asks them ([`Router`]): the first `[[routes]]` entry whose
//! domains match the recipient's domain names its pool; no match is the default pool or, with
//! `[routing] unrouted = "reject"`, `550 5.1.2`. Routes grant no relay permission: relay
//! control, before the relay, decided already whether the client may send to that domain.

use attitude_codec::RcptTo;
use attitude_policy::access::Matcher;
use attitude_service::address::normalize_domain;
use attitude_service::relay::{Route, Router};

use crate::config::{CompiledRoute, Unrouted};

/// One route with its pool's index in the relay's pools.
#[derive(Debug)]
struct Entry {
    matcher: Matcher,
    pool: usize,
    max_message_size: Option<u64>,
    greylist: bool,
}

/// A listener's routes.
#[derive(Debug)]
pub(crate) struct RouteTable {
    entries: Vec<Entry>,
    unrouted: Unrouted,
}

impl RouteTable {
    /// The table over `routes`, `index` giving each pool's place among the relay's pools.
    pub(crate) fn new(
        routes: Vec<CompiledRoute>,
        unrouted: Unrouted,
        index: impl Fn(&str) -> usize,
    ) -> Self {
        Self {
            entries: routes
                .into_iter()
                .map(|r| Entry {
                    pool: index(&r.pool),
                    matcher: r.matcher,
                    max_message_size: r.max_message_size,
                    greylist: r.greylist,
                })
                .collect(),
            unrouted,
        }
    }

    /// The first route matching `rcpt`'s domain (`None`: no route, or no domain).
    fn matching(&self, rcpt: &RcptTo) -> Option<&Entry> {
        let (_, domain) = rcpt.address.rsplit_once('@')?;
        // Normalised once for every route, as the access lists do.
        let domain = normalize_domain(domain);
        self.entries.iter().find(|e| e.matcher.normalized(&domain))
    }

    /// Whether `rcpt`'s route skips greylisting.
    pub(crate) fn greylist_exempt(&self, rcpt: &RcptTo) -> bool {
        self.matching(rcpt).is_some_and(|e| !e.greylist)
    }
}

impl Router for RouteTable {
    fn route(&self, rcpt: &RcptTo) -> Route {
        match self.matching(rcpt) {
            Some(e) => Route::Pool {
                pool: e.pool,
                max_message_size: e.max_message_size,
            },
            // `<postmaster>` has no domain: the default pool serves it whatever `unrouted` says
            // (RFC 5321 §4.5.1).
            None if self.unrouted == Unrouted::Default || !rcpt.address.contains('@') => {
                Route::Pool {
                    pool: 0,
                    max_message_size: None,
                }
            }
            None => Route::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(unrouted: Unrouted) -> RouteTable {
        let route = |values: &[&str], pool: &str, greylist| CompiledRoute {
            matcher: Matcher::names(values.iter().copied()).unwrap(),
            pool: pool.into(),
            max_message_size: None,
            greylist,
        };
        RouteTable::new(
            vec![
                route(&["a.example", ".a.example"], "a", true),
                route(&["/^b[0-9]+\\.example$/"], "b", false),
            ],
            unrouted,
            |name| match name {
                "a" => 1,
                "b" => 2,
                _ => 0,
            },
        )
    }

    fn pool(route: Route) -> Option<usize> {
        match route {
            Route::Pool { pool, .. } => Some(pool),
            Route::Unknown => None,
        }
    }

    #[test]
    fn first_match_then_unrouted() {
        let t = table(Unrouted::Default);
        let at = |a: &str| pool(t.route(&RcptTo::new(a)));
        assert_eq!(at("x@A.Example"), Some(1));
        assert_eq!(at("x@mx.a.example"), Some(1));
        assert_eq!(at("x@b12.example"), Some(2));
        assert_eq!(at("x@b.example"), Some(0));
        assert_eq!(at("x@nota.example"), Some(0));
        assert!(t.greylist_exempt(&RcptTo::new("x@b7.example")));
        assert!(!t.greylist_exempt(&RcptTo::new("x@a.example")));
        let t = table(Unrouted::Reject);
        assert_eq!(pool(t.route(&RcptTo::new("x@other.example"))), None);
        assert_eq!(pool(t.route(&RcptTo::new("postmaster"))), Some(0));
        assert_eq!(pool(t.route(&RcptTo::new("x@a.example"))), Some(1));
    }
}
