//! The live configuration: an immutable snapshot swapped atomically on reload.
//!
//! Each request loads the current snapshot once (an `Arc` clone) into its context and
//! keeps it to the end, so a reload never changes the rules under a running request or
//! stream, and the request path takes no lock.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::RouteMetrics;
use crate::upstream::Upstream;

/// A validated config together with the runtime objects built from it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Config,
    /// Same order as `config.upstreams`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Same order as `config.routes`: each route's metric handles, found by name once per
    /// config instead of once per request.
    pub route_metrics: Vec<OnceLock<Arc<RouteMetrics>>>,
}

impl Snapshot {
    /// Builds the runtime objects; upstreams that survive a reload keep their resolved addresses.
    pub(crate) fn new(config: Config, previous: Option<&Snapshot>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let upstream = Upstream::new(u);
                if let Some(old) = previous.and_then(|p| p.upstream(&u.name)) {
                    upstream.inherit_addresses(old);
                }
                Arc::new(upstream)
            })
            .collect();
        let route_metrics = config.routes.iter().map(|_| OnceLock::new()).collect();
        Snapshot {
            config,
            upstreams,
            route_metrics,
        }
    }

    pub(crate) fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// The handle every part of the proxy shares.
pub(crate) type SharedState = Arc<ArcSwap<Snapshot>>;

pub(crate) fn shared(snapshot: Snapshot) -> SharedState {
    Arc::new(ArcSwap::from_pointee(snapshot))
}
