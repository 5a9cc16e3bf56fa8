//! Upstream server groups: host names resolved when requests come, round robin, re-resolution.
//!
//! nginx resolves `proxy_pass` hosts once at start and refuses to start when one does not
//! resolve yet. In a compose stack the proxy often starts before the services behind it, and
//! a restarted container comes back with a new address; so here an upstream starts with the
//! addresses of its IP-literal servers only, host names are resolved on the first request
//! that needs them, refreshed in the background, and re-resolved after a failed connect.
//! Resolution goes through tokio (a blocking-pool lookup), never on a worker thread, and
//! peers are built from `SocketAddr`s, because `HttpPeer::new` with a host name blocks.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{ServerAddr, UpstreamConfig};
use crate::metrics::UpstreamMetrics;

/// How often host names are refreshed in the background.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Bound on one resolution attempt made while a request waits.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream}: no address for {servers}")]
pub(crate) struct ResolveError {
    upstream: String,
    servers: String,
}

/// One `[upstreams.NAME]` table, with its current addresses.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub name: String,
    pub servers: Vec<ServerAddr>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Set after a failed connect: the next request re-resolves before picking.
    stale: AtomicBool,
    next: AtomicUsize,
    /// Single flight for resolutions triggered by requests.
    resolving: tokio::sync::Mutex<()>,
    /// Its metric handles, found by name once.
    pub metrics: OnceLock<Arc<UpstreamMetrics>>,
}

impl Upstream {
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        let literal: Vec<SocketAddr> = config
            .servers
            .iter()
            .filter_map(|s| {
                s.host
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, s.port))
            })
            .collect();
        let all_literal = literal.len() == config.servers.len();
        Upstream {
            name: config.name.clone(),
            servers: config.servers.clone(),
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            addrs: ArcSwap::from_pointee(if all_literal { literal } else { Vec::new() }),
            stale: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            resolving: tokio::sync::Mutex::new(()),
            metrics: OnceLock::new(),
        }
    }

    /// Keeps the addresses already resolved by the previous config's upstream of the same
    /// servers, so a reload does not make the next request wait for DNS.
    pub(crate) fn inherit_addresses(&self, previous: &Upstream) {
        if previous.servers == self.servers {
            self.addrs.store(previous.addrs.load_full());
        }
    }

    /// Whether any server is a host name (IP literals never need re-resolution).
    pub(crate) fn has_host_names(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.host.parse::<IpAddr>().is_err())
    }

    /// The current addresses; resolves first when there are none yet or they went stale.
    pub(crate) async fn addresses(&self) -> Result<Arc<Vec<SocketAddr>>, ResolveError> {
        let current = self.addrs.load_full();
        if !current.is_empty() && !self.stale.load(Ordering::Relaxed) {
            return Ok(current);
        }
        // Boxed: the resolution state stays out of the future of every request's fast path.
        Box::pin(self.resolve_for_request()).await
    }

    /// The slow path of [`Self::addresses`]: one request resolves, the others wait for it.
    async fn resolve_for_request(&self) -> Result<Arc<Vec<SocketAddr>>, ResolveError> {
        let _flight = self.resolving.lock().await;
        let current = self.addrs.load_full();
        if !current.is_empty() && !self.stale.load(Ordering::Relaxed) {
            return Ok(current); // another request resolved while we waited
        }
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, self.refresh())
            .await
            .unwrap_or(false);
        let now = self.addrs.load_full();
        if resolved || !now.is_empty() {
            // A failed re-resolution keeps serving the old addresses: better than nothing.
            Ok(now)
        } else {
            Err(ResolveError {
                upstream: self.name.clone(),
                servers: self
                    .servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// Resolves every server; stores the result when at least one address was found.
    pub(crate) async fn refresh(&self) -> bool {
        let mut found = Vec::new();
        for server in &self.servers {
            match server.host.parse::<IpAddr>() {
                Ok(ip) => found.push(SocketAddr::new(ip, server.port)),
                Err(_) => {
                    match tokio::net::lookup_host((server.host.as_str(), server.port)).await {
                        Ok(addrs) => found.extend(addrs),
                        Err(e) => {
                            tracing::debug!(upstream = %self.name, server = %server, "resolve failed: {e}")
                        }
                    }
                }
            }
        }
        found.dedup();
        if found.is_empty() {
            return false;
        }
        if **self.addrs.load() != found {
            tracing::info!(upstream = %self.name, addresses = ?found, "upstream addresses changed");
            self.addrs.store(Arc::new(found));
        }
        self.stale.store(false, Ordering::Relaxed);
        true
    }

    /// Marks the addresses as suspect after a failed connect.
    pub(crate) fn mark_stale(&self) {
        if self.has_host_names() {
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    /// Round robin: a request takes a starting slot once, and each retry moves one further.
    pub(crate) fn start_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn pick(addrs: &[SocketAddr], start: usize, attempt: usize) -> Option<SocketAddr> {
        if addrs.is_empty() {
            return None;
        }
        addrs
            .get(start.wrapping_add(attempt) % addrs.len())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: &[(&str, u16)]) -> UpstreamConfig {
        UpstreamConfig {
            name: "u".into(),
            servers: servers
                .iter()
                .map(|(h, p)| ServerAddr {
                    host: (*h).into(),
                    port: *p,
                })
                .collect(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn literals_need_no_resolution() {
        let u = Upstream::new(&config(&[("127.0.0.1", 1), ("127.0.0.2", 2)]));
        assert!(!u.has_host_names());
        let addrs = u.addresses().await.expect("literal addresses");
        assert_eq!(addrs.len(), 2);
        assert_eq!(Upstream::pick(&addrs, 0, 0), Some(addrs[0]));
        assert_eq!(Upstream::pick(&addrs, 0, 1), Some(addrs[1]));
        assert_eq!(Upstream::pick(&addrs, 1, 1), Some(addrs[0]));
    }

    #[tokio::test]
    async fn host_names_resolve_on_demand() {
        let u = Upstream::new(&config(&[("localhost", 8080)]));
        let addrs = u.addresses().await.expect("localhost resolves");
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    #[tokio::test]
    async fn unresolvable_is_an_error() {
        let u = Upstream::new(&config(&[("no-such-host.invalid", 80)]));
        assert!(u.addresses().await.is_err());
    }
}
