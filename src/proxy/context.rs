//! What one request carries from phase to phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Uri};

use crate::config::{ProxyRoute, RouteConfig};
use crate::state::Snapshot;
use crate::telemetry::{Kind as TelemetryKind, RequestTelemetry, RequestView};
use crate::upstream::Upstream;

pub(crate) struct RequestCtx {
    /// The config this request started with; kept to its end, whatever reloads happen.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    /// Index into `snapshot.config.routes`, once matched.
    pub route: Option<usize>,
    /// What the request is: health probe, local answer or proxied.
    pub kind: RequestKind,
    /// The rewritten upstream URI when the route has `upstream_path`.
    pub upstream_uri: Option<Uri>,
    /// Headers decided by forward auth: `None` removes the header.
    pub auth_headers: Vec<(HeaderName, Option<HeaderValue>)>,
    pub upstream: Option<Arc<Upstream>>,
    pub upstream_addrs: Arc<Vec<SocketAddr>>,
    pub start_slot: usize,
    pub attempts: usize,
    pub peer: Option<SocketAddr>,
    /// Request body bytes seen so far, against `client_max_body_size`.
    pub request_body_bytes: u64,
    /// Status of an answer the proxy wrote itself (local, error).
    pub local_status: Option<u16>,
    /// Counts the request as running until the context drops, for the SIGTERM drain.
    _in_flight: crate::shutdown::RunningRequest,
    /// The gzip encoder of a response being compressed.
    pub gzip: Option<Box<crate::compress::GzipStream>>,
    /// A missed asset-cache lookup: the response may be captured and stored.
    pub asset: Option<Box<crate::cache::Capture>>,
    /// Metrics handles, timings and the span of this request.
    pub telemetry: RequestTelemetry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Pending,
    Health,
    Local,
    Proxied,
    /// Relayed off Pingora's pipeline (an SSE stream): this context is what was left
    /// behind, and the relay's own context has the request.
    Detached,
}

impl RequestCtx {
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            started: Instant::now(),
            route: None,
            kind: RequestKind::Pending,
            upstream_uri: None,
            auth_headers: Vec::new(),
            upstream: None,
            upstream_addrs: Arc::default(),
            start_slot: 0,
            attempts: 0,
            peer: None,
            request_body_bytes: 0,
            local_status: None,
            _in_flight: crate::shutdown::RunningRequest::enter(),
            gzip: None,
            asset: None,
            telemetry: Default::default(),
        }
    }

    pub(crate) fn route(&self) -> Option<&RouteConfig> {
        self.route.map(|i| &self.snapshot.config.routes[i])
    }

    /// The route's proxy settings, when it is a proxied route.
    pub(crate) fn proxy_route(&self) -> Option<&ProxyRoute> {
        self.route()?.proxy()
    }

    /// Route name for logs and metric labels: bounded whatever the client sends.
    pub(crate) fn route_label(&self) -> &str {
        route_label(self.kind, self.route())
    }

    /// What telemetry reads of this request, and its own state to update: two borrows of
    /// different fields, taken together.
    pub(crate) fn telemetry_parts(&mut self) -> (RequestView<'_>, &mut RequestTelemetry) {
        let route = self.route.map(|i| &self.snapshot.config.routes[i]);
        let view = RequestView {
            snapshot: &self.snapshot,
            route: self.route,
            label: route_label(self.kind, route),
            kind: match self.kind {
                RequestKind::Health => TelemetryKind::Health,
                RequestKind::Proxied | RequestKind::Detached => TelemetryKind::Proxied,
                RequestKind::Pending | RequestKind::Local => TelemetryKind::Other,
            },
            sse_route: route.and_then(RouteConfig::proxy).is_some_and(|r| r.sse),
            access_log: route.is_none_or(|r| r.access_log),
            started: self.started,
            upstream: self.upstream.as_deref(),
            peer: self.peer,
        };
        (view, &mut self.telemetry)
    }

    pub(crate) fn upstream_name(&self) -> &str {
        self.upstream.as_ref().map_or("-", |u| u.name.as_str())
    }
}

/// Route name for logs and metric labels: `health`, the route's name, or `unmatched`.
fn route_label(kind: RequestKind, route: Option<&RouteConfig>) -> &str {
    match (kind, route) {
        (RequestKind::Health, _) => "health",
        (_, Some(route)) => &route.name,
        (_, None) => "unmatched",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestCtx {
        let text = r#"
[upstreams.app]
servers = ["127.0.0.1:9"]
[[routes]]
name = "stream"
prefix = "/s/"
upstream = "app"
sse = true
[[routes]]
name = "gone"
exact = "/gone"
return = 404
"#;
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).expect("config");
        RequestCtx::new(Arc::new(Snapshot::new(config, None)))
    }

    /// What telemetry is told of a request follows the proxy's decisions about it.
    #[test]
    fn the_telemetry_view_follows_the_request() {
        let mut ctx = ctx();
        let (view, _) = ctx.telemetry_parts();
        assert_eq!((view.label, view.kind), ("unmatched", TelemetryKind::Other));
        assert!(!view.sse_route);

        ctx.route = Some(0);
        ctx.kind = RequestKind::Proxied;
        let (view, _) = ctx.telemetry_parts();
        assert_eq!((view.label, view.kind), ("stream", TelemetryKind::Proxied));
        assert!(view.sse_route);

        ctx.kind = RequestKind::Health;
        let (view, _) = ctx.telemetry_parts();
        assert_eq!((view.label, view.kind), ("health", TelemetryKind::Health));

        ctx.route = Some(1);
        ctx.kind = RequestKind::Local;
        let (view, _) = ctx.telemetry_parts();
        assert_eq!((view.label, view.kind), ("gone", TelemetryKind::Other));
        assert!(!view.sse_route, "a return route has no proxy settings");
        assert!(ctx.proxy_route().is_none());
    }

    /// Pingora keeps the context inside its per-request futures and moves those futures
    /// several times per request: every byte of it is copied on every request (measured with
    /// `bench/instructions.sh`). Rarely used state belongs behind a `Box`.
    #[test]
    fn the_context_stays_small() {
        let size = std::mem::size_of::<RequestCtx>();
        assert!(size <= 384, "RequestCtx is {size} bytes");
    }
}
