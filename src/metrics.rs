//! Prometheus metrics (SPEC §5), served as text at `GET /metrics` on `metrics.listen`
//! ([`super::metrics_server`]).
//!
//! The metric families live in one process-wide registry, because every part of the proxy
//! records into them (the request path, forward auth, SSE, the config reloader) and a
//! reload must not reset a counter. Label values are bounded by construction: routes are
//! named by the config (plus `health` and `unmatched`), methods are folded to a fixed set,
//! statuses are three-digit codes.
//!
//! The request path never formats a label value: each route's handles are resolved once
//! (the first time its name is seen) into a [`RouteMetrics`], and each `(method, status)`
//! series of a route is resolved once into a slot of a fixed table, so counting a request
//! is a few atomic operations.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::Method;
use opentelemetry::metrics::{BoundHistogram, Histogram as OtelHistogram};
use opentelemetry::KeyValue;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

use crate::otlp_wire::{encode_naming, SpanKind};

/// Histogram buckets in seconds: from 1 ms API calls to 30 min SSE streams.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// Every metric name this module exports (checked against the dashboard and alert rules).
pub const METRIC_NAMES: &[&str] = &[
    "edge_http_requests_total",
    "edge_http_request_duration_seconds",
    "edge_http_response_body_bytes_total",
    "edge_http_requests_in_flight",
    "edge_sse_streams_active",
    "edge_upstream_requests_total",
    "edge_upstream_duration_seconds",
    "edge_auth_requests_total",
    "edge_config_reloads_total",
    "edge_config_last_reload_success_timestamp_seconds",
    "edge_access_log_dropped_total",
    "edge_otlp_spans_dropped_total",
    "edge_trace_spans_kept_total",
    "edge_sse_streams_total",
    "edge_sse_time_to_first_byte_seconds",
    "edge_sse_stream_duration_seconds",
    "edge_sse_events_total",
];

/// The `edge_sse_*` families of finished streams.
struct StreamFamilies {
    ends: IntCounterVec,
    time_to_first_byte: HistogramVec,
    duration: HistogramVec,
    events: IntCounterVec,
}

impl StreamFamilies {
    fn register(r: &Registry) -> StreamFamilies {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str| {
            register(
                r,
                HistogramVec::new(duration_opts(name, help), &["route"]).expect("valid"),
            )
        };
        StreamFamilies {
            ends: counter(
                "edge_sse_streams_total",
                "Finished streams, by how they ended",
                &["route", "end"],
            ),
            time_to_first_byte: histogram(
                "edge_sse_time_to_first_byte_seconds",
                "Time from the request's arrival to the first body byte sent to the client",
            ),
            duration: histogram(
                "edge_sse_stream_duration_seconds",
                "Time from the request's arrival to the stream's end",
            ),
            events: counter(
                "edge_sse_events_total",
                "SSE events relayed (each ends with a blank line)",
                &["route"],
            ),
        }
    }
}

/// The `end` label values of `edge_sse_streams_total` (SPEC §5).
pub(crate) const STREAM_ENDS: [&str; 5] = [
    "complete",
    "client_closed",
    "upstream_error",
    "idle_timeout",
    "shutdown",
];

/// One route's `edge_sse_*` series.
struct StreamSeries {
    /// Indexed as [`STREAM_ENDS`].
    ends: [IntCounter; 5],
    time_to_first_byte: Histogram,
    duration: Histogram,
    events: IntCounter,
}

/// Server addresses remembered per upstream for span attributes.
const MAX_PEER_NAMES: usize = 64;

/// Statuses with a pre-resolved slot: every valid HTTP status code.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
const STATUS_SLOTS: usize = (STATUS_MAX - STATUS_MIN + 1) as usize;

/// The `method` label: the methods the stack uses, everything else is `OTHER`, so a client
/// inventing methods cannot create series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodLabel {
    const COUNT: usize = 8;

    pub(crate) fn of(method: &Method) -> Self {
        match *method {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::DELETE => MethodLabel::Delete,
            Method::PATCH => MethodLabel::Patch,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }

    /// `http.request.method` as the semantic conventions want it: `_OTHER` for the rest.
    pub(crate) fn semconv(self) -> &'static str {
        match self {
            MethodLabel::Other => "_OTHER",
            known => known.as_str(),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "OTHER",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The result label of `edge_auth_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthResult {
    /// 2xx from the auth service.
    Allow,
    /// 401/403 from the auth service.
    Deny,
    /// Anything else, a timeout or no connection.
    Error,
}

impl AuthResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthResult::Allow => "allow",
            AuthResult::Deny => "deny",
            AuthResult::Error => "error",
        }
    }
}

struct Families {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    body_bytes: IntCounterVec,
    in_flight: IntGaugeVec,
    sse_active: IntGaugeVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    auth_requests: IntCounterVec,
    reloads: IntCounterVec,
    last_reload_success: Gauge,
    access_log_dropped: IntCounter,
    spans_dropped: IntCounter,
    spans_kept: IntCounterVec,
    streams: StreamFamilies,
    routes: NameCache<RouteMetrics>,
    upstreams: NameCache<UpstreamMetrics>,
}

/// Registers one collector; the definitions are constants, so a failure is a programming
/// error that the unit tests catch.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("static metric definitions are valid and unique");
    c
}

fn duration_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec())
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let r = Registry::new();
    let route_method_status = &["route", "method", "status"];
    Families {
        requests: register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "edge_http_requests_total",
                    "HTTP requests answered, by route",
                ),
                route_method_status,
            )
            .expect("valid"),
        ),
        duration: register(
            &r,
            HistogramVec::new(
                duration_opts(
                    "edge_http_request_duration_seconds",
                    "Time from the request header to the end of the response (SSE: the stream)",
                ),
                route_method_status,
            )
            .expect("valid"),
        ),
        body_bytes: register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "edge_http_response_body_bytes_total",
                    "Response body bytes sent to clients (after compression)",
                ),
                &["route"],
            )
            .expect("valid"),
        ),
        in_flight: register(
            &r,
            IntGaugeVec::new(
                Opts::new("edge_http_requests_in_flight", "Requests being handled"),
                &["route"],
            )
            .expect("valid"),
        ),
        sse_active: register(
            &r,
            IntGaugeVec::new(
                Opts::new("edge_sse_streams_active", "Open Server-Sent-Events streams"),
                &["route"],
            )
            .expect("valid"),
        ),
        upstream_requests: register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "edge_upstream_requests_total",
                    "Requests sent to upstreams, by upstream status (502/504: failed)",
                ),
                &["upstream", "status"],
            )
            .expect("valid"),
        ),
        upstream_duration: register(
            &r,
            HistogramVec::new(
                duration_opts(
                    "edge_upstream_duration_seconds",
                    "Time from choosing the upstream to the end of its response",
                ),
                &["upstream"],
            )
            .expect("valid"),
        ),
        auth_requests: register(
            &r,
            IntCounterVec::new(
                Opts::new("edge_auth_requests_total", "Forward-auth checks, by result"),
                &["auth", "result"],
            )
            .expect("valid"),
        ),
        reloads: register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "edge_config_reloads_total",
                    "Config reloads (not the first load), by result",
                ),
                &["result"],
            )
            .expect("valid"),
        ),
        last_reload_success: register(
            &r,
            Gauge::new(
                "edge_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load or reload",
            )
            .expect("valid"),
        ),
        access_log_dropped: register(
            &r,
            IntCounter::new(
                "edge_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
            )
            .expect("valid"),
        ),
        spans_dropped: register(
            &r,
            IntCounter::new(
                "edge_otlp_spans_dropped_total",
                "Spans dropped because the OTLP export queue was full",
            )
            .expect("valid"),
        ),
        spans_kept: {
            let kept = register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "edge_trace_spans_kept_total",
                        "Spans exported although the head sampler left them out (errors, slow requests)",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            );
            // both series from the start: a rate over them is 0, not absent
            for reason in [Kept::Error, Kept::Slow] {
                kept.with_label_values(&[reason.as_str()]);
            }
            kept
        },
        streams: StreamFamilies::register(&r),
        routes: ArcSwap::default(),
        upstreams: ArcSwap::default(),
        registry: r,
    }
});

/// Creates every family, so a scrape shows them all from the start and the first request
/// does not pay for the registration.
pub(crate) fn init() {
    LazyLock::force(&FAMILIES);
}

/// Whether the request path counts into the per-request families: only while a
/// `metrics.listen` is configured (a reload may add or remove it), so that a proxy
/// without a scraper pays nothing per request.
static COUNT_REQUESTS: AtomicBool = AtomicBool::new(false);

/// Turns per-request counting on or off (a metrics listener is configured or not).
pub(crate) fn count_requests(on: bool) {
    COUNT_REQUESTS.store(on, Ordering::Relaxed);
}

pub(crate) fn requests_counted() -> bool {
    COUNT_REQUESTS.load(Ordering::Relaxed)
}

/// One handle per HTTP status, each made on first use; the table itself is allocated on
/// first use too (a route sees a handful of statuses of one or two methods).
struct StatusSlots<T>(OnceLock<Box<[OnceLock<T>]>>);

impl<T> Default for StatusSlots<T> {
    fn default() -> Self {
        StatusSlots(OnceLock::new())
    }
}

impl<T> StatusSlots<T> {
    /// The handle of `status`; `None` for a number outside 100..=599, which the caller
    /// handles uncached.
    fn get(&self, status: u16, make: impl FnOnce() -> T) -> Option<&T> {
        if !(STATUS_MIN..=STATUS_MAX).contains(&status) {
            return None;
        }
        let slots = self
            .0
            .get_or_init(|| (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect());
        Some(slots[usize::from(status - STATUS_MIN)].get_or_init(make))
    }
}

/// One `(method, status)` series of a route.
struct RequestSeries {
    total: IntCounter,
    duration: Histogram,
}

/// The handles of one route label, resolved once and shared by all its requests:
/// Prometheus series, OTLP histograms bound to their attributes, span names.
pub(crate) struct RouteMetrics {
    name: Arc<str>,
    in_flight: IntGauge,
    body_bytes: IntCounter,
    series: [StatusSlots<RequestSeries>; MethodLabel::COUNT],
    otlp: [StatusSlots<BoundHistogram<f64>>; MethodLabel::COUNT],
    /// Encoded once per method: what each SERVER span of the route repeats.
    span_namings: [OnceLock<Vec<u8>>; MethodLabel::COUNT],
    /// The `edge_sse_*` series, resolved at the route's first stream.
    streams: OnceLock<Box<StreamSeries>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    fn new(name: &str) -> Self {
        let f = &*FAMILIES;
        RouteMetrics {
            name: Arc::from(name),
            in_flight: f.in_flight.with_label_values(&[name]),
            body_bytes: f.body_bytes.with_label_values(&[name]),
            series: Default::default(),
            otlp: Default::default(),
            span_namings: Default::default(),
            streams: OnceLock::new(),
        }
    }

    /// Counts one finished stream of the route (SPEC §5 `edge_sse_*`).
    /// `end` is one of [`STREAM_ENDS`]; `time_to_first_byte` is `None` when no body byte
    /// reached the client.
    pub(crate) fn stream_finished(
        &self,
        end: &str,
        time_to_first_byte: Option<f64>,
        seconds: f64,
        events: u64,
    ) {
        let series = self.streams.get_or_init(|| {
            let f = &FAMILIES.streams;
            let name = &*self.name;
            Box::new(StreamSeries {
                ends: STREAM_ENDS.map(|end| f.ends.with_label_values(&[name, end])),
                time_to_first_byte: f.time_to_first_byte.with_label_values(&[name]),
                duration: f.duration.with_label_values(&[name]),
                events: f.events.with_label_values(&[name]),
            })
        });
        if let Some(end) = STREAM_ENDS.iter().position(|e| *e == end) {
            series.ends[end].inc();
        }
        if let Some(ttfb) = time_to_first_byte {
            series.time_to_first_byte.observe(ttfb);
        }
        series.duration.observe(seconds);
        series.events.inc_by(events);
    }

    /// The SERVER span's name (`METHOD route`), kind, `http.request.method` and
    /// `http.route`, encoded (`otlp_wire::Naming::Encoded`).
    pub(crate) fn span_naming(&self, method: MethodLabel) -> &[u8] {
        self.span_namings[method.index()].get_or_init(|| {
            let name = format!("{} {}", method.semconv(), self.name);
            encode_naming(&name, SpanKind::Server, |a| {
                a.str("http.request.method", method.semconv());
                a.str("http.route", &self.name);
            })
        })
    }

    /// Counts a request in `edge_http_requests_in_flight` until the guard drops.
    pub(crate) fn enter(self: Arc<Self>) -> InFlightGauge {
        self.in_flight.inc();
        InFlightGauge(self)
    }

    /// Counts one answered request.
    pub(crate) fn request_finished(
        &self,
        method: MethodLabel,
        status: u16,
        seconds: f64,
        body_bytes: u64,
    ) {
        self.body_bytes.inc_by(body_bytes);
        let make = || {
            let status = status.to_string();
            let labels = [&*self.name, method.as_str(), status.as_str()];
            RequestSeries {
                total: FAMILIES.requests.with_label_values(&labels),
                duration: FAMILIES.duration.with_label_values(&labels),
            }
        };
        let cached = self.series[method.index()].get(status, make);
        let uncached;
        let series = match cached {
            Some(series) => series,
            None => {
                uncached = make();
                &uncached
            }
        };
        series.total.inc();
        series.duration.observe(seconds);
    }

    /// Records `http.server.request.duration` through a histogram bound to the route's
    /// attributes (resolving attributes per call was the costliest part of OTLP metrics).
    pub(crate) fn record_otlp(
        &self,
        histogram: &OtelHistogram<f64>,
        method: MethodLabel,
        status: u16,
        seconds: f64,
    ) {
        record_bound(
            &self.otlp[method.index()],
            histogram,
            seconds,
            || duration_attributes(method, status, "http.route", &self.name),
            status,
        );
    }
}

/// Records into the bound histogram of `status`, binding it on first use.
fn record_bound(
    slots: &StatusSlots<BoundHistogram<f64>>,
    histogram: &OtelHistogram<f64>,
    seconds: f64,
    attributes: impl Fn() -> [KeyValue; 3],
    status: u16,
) {
    match slots.get(status, || histogram.bind(&attributes())) {
        Some(bound) => bound.record(seconds),
        None => histogram.record(seconds, &attributes()),
    }
}

/// The attributes of `http.server.request.duration` / `http.client.request.duration`.
fn duration_attributes(
    method: MethodLabel,
    status: u16,
    name_key: &'static str,
    name: &Arc<str>,
) -> [KeyValue; 3] {
    [
        KeyValue::new("http.request.method", method.semconv()),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new(name_key, name.clone()),
    ]
}

/// A request in flight on a route; a guard, so that a request that ends in an unusual
/// way (its context dropped without the logging phase) still leaves the gauge.
pub(crate) struct InFlightGauge(Arc<RouteMetrics>);

impl InFlightGauge {
    #[cfg(test)]
    pub(crate) fn route(&self) -> &Arc<RouteMetrics> {
        &self.0
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The handles of one upstream, resolved once.
pub(crate) struct UpstreamMetrics {
    name: Arc<str>,
    duration: Histogram,
    requests: StatusSlots<IntCounter>,
    otlp: [StatusSlots<BoundHistogram<f64>>; MethodLabel::COUNT],
    /// `address:port` of the servers seen, for span attributes without formatting.
    peers: ArcSwap<Vec<(SocketAddr, Arc<str>)>>,
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamMetrics {
    fn new(name: &str) -> Self {
        UpstreamMetrics {
            name: Arc::from(name),
            duration: FAMILIES.upstream_duration.with_label_values(&[name]),
            requests: StatusSlots::default(),
            otlp: Default::default(),
            peers: ArcSwap::default(),
        }
    }

    /// `address:port` of one of this upstream's servers, formatted once per server (up to
    /// [`MAX_PEER_NAMES`]; an upstream whose name resolves to ever new addresses formats
    /// the rest each time).
    pub(crate) fn peer_name(&self, peer: SocketAddr) -> Arc<str> {
        if let Some((_, name)) = self.peers.load().iter().find(|(p, _)| *p == peer) {
            return name.clone();
        }
        let name: Arc<str> = crate::text::socket_addr_string(peer).into();
        if self.peers.load().len() < MAX_PEER_NAMES {
            self.peers.rcu(|peers| {
                let mut peers = Vec::clone(peers);
                if !peers.iter().any(|(p, _)| *p == peer) {
                    peers.push((peer, name.clone()));
                }
                peers
            });
        }
        name
    }

    /// Counts one upstream exchange: its status (502/504 when it failed) and its duration.
    pub(crate) fn record(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let counter = || {
            FAMILIES
                .upstream_requests
                .with_label_values(&[&*self.name, &status.to_string()])
        };
        match self.requests.get(status, counter) {
            Some(counter) => counter.inc(),
            None => counter().inc(),
        }
    }

    /// Records `http.client.request.duration` (bound, as for routes).
    pub(crate) fn record_otlp(
        &self,
        histogram: &OtelHistogram<f64>,
        method: MethodLabel,
        status: u16,
        seconds: f64,
    ) {
        record_bound(
            &self.otlp[method.index()],
            histogram,
            seconds,
            || duration_attributes(method, status, "server.address", &self.name),
            status,
        );
    }
}

/// FNV-1a for the name caches: their keys are route and upstream names from the config,
/// never from clients, so a fast hash without flooding protection is the right trade.
#[derive(Clone, Copy, Default)]
pub(crate) struct Fnv;

pub(crate) struct FnvHasher(u64);

impl BuildHasher for Fnv {
    type Hasher = FnvHasher;

    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NameCache<T> = ArcSwap<HashMap<Box<str>, Arc<T>, Fnv>>;

/// Looks a name up in a copy-on-write cache; inserting is rare (once per name).
fn cached<T>(cache: &NameCache<T>, name: &str, make: impl Fn(&str) -> T) -> Arc<T> {
    if let Some(found) = cache.load().get(name) {
        return found.clone();
    }
    let made = Arc::new(make(name));
    let mut result = made.clone();
    cache.rcu(|map| {
        let mut map = HashMap::clone(&**map);
        result = map
            .entry(name.into())
            .or_insert_with(|| made.clone())
            .clone();
        map
    });
    result
}

/// The handles of a route label (`health`, `unmatched` or a route name).
pub(crate) fn route(name: &str) -> Arc<RouteMetrics> {
    cached(&FAMILIES.routes, name, RouteMetrics::new)
}

/// The handles of an upstream.
pub(crate) fn upstream(name: &str) -> Arc<UpstreamMetrics> {
    cached(&FAMILIES.upstreams, name, UpstreamMetrics::new)
}

/// Counts one forward-auth check of the `[auth.NAME]` table `auth`.
pub(crate) fn record_auth(auth: &str, result: AuthResult) {
    FAMILIES
        .auth_requests
        .with_label_values(&[auth, result.as_str()])
        .inc();
}

/// Counts a config reload (not the first load); a success also moves the
/// last-success timestamp.
pub(crate) fn record_reload(success: bool) {
    let result = if success { "success" } else { "error" };
    FAMILIES.reloads.with_label_values(&[result]).inc();
    if success {
        record_config_loaded();
    }
}

/// Sets the last-success timestamp; called for the first load, which is not a reload.
pub(crate) fn record_config_loaded() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    FAMILIES.last_reload_success.set(now);
}

/// An open SSE stream: `edge_sse_streams_active{route}` is one higher while it lives.
#[must_use = "the stream counts as active only while the guard lives"]
pub(crate) struct SseStreamGuard {
    gauge: IntGauge,
}

impl Drop for SseStreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Marks an SSE stream of `route` as open until the returned guard is dropped (keep it in
/// the request context, which lives until the stream ends).
pub(crate) fn sse_stream_opened(route: &str) -> SseStreamGuard {
    let gauge = FAMILIES.sse_active.with_label_values(&[route]);
    gauge.inc();
    SseStreamGuard { gauge }
}

pub(crate) fn access_log_line_dropped() {
    FAMILIES.access_log_dropped.inc();
}

pub(crate) fn span_dropped() {
    FAMILIES.spans_dropped.inc();
}

/// A span exported by the error/slow rule (`telemetry::keep`).
pub(crate) fn span_kept(reason: Kept) {
    FAMILIES
        .spans_kept
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// Why a span the head sampler left out is exported: the `reason` label of
/// `edge_trace_spans_kept_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Status ≥ 500, or the upstream failed.
    Error,
    /// Slower than `slow_threshold` (a stream: its time to first byte).
    Slow,
}

impl Kept {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kept::Error => "error",
            Kept::Slow => "slow",
        }
    }
}

/// The registry in Prometheus text format.
pub(crate) fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&FAMILIES.registry.gather(), &mut out) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> String {
        String::from_utf8(render()).expect("utf-8")
    }

    #[test]
    fn every_family_is_registered_under_its_name() {
        init();
        // Vec families appear once they have a series; make one of each.
        let in_flight = route("t-names").enter();
        in_flight
            .route()
            .request_finished(MethodLabel::Get, 200, 0.01, 5);
        drop(in_flight);
        upstream("t-names").record(200, 0.01);
        record_auth("t-names", AuthResult::Allow);
        record_reload(true);
        drop(sse_stream_opened("t-names"));
        route("t-names").stream_finished("complete", Some(0.005), 0.5, 2);
        access_log_line_dropped();
        span_dropped();
        let text = scrape();
        for name in METRIC_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    #[test]
    fn request_counters_move_per_method_and_status() {
        let r = route("t-count");
        let first = r.clone().enter();
        let second = r.clone().enter();
        assert!(scrape().contains("edge_http_requests_in_flight{route=\"t-count\"} 2"));
        r.request_finished(MethodLabel::of(&Method::GET), 200, 0.002, 10);
        drop(first);
        let brew = Method::from_bytes(b"BREW").expect("method");
        r.request_finished(MethodLabel::of(&brew), 418, 3.0, 0);
        drop(second);
        r.request_finished(MethodLabel::Post, 1000, 0.1, 0);
        let text = scrape();
        assert!(text.contains(
            "edge_http_requests_total{method=\"GET\",route=\"t-count\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "edge_http_requests_total{method=\"OTHER\",route=\"t-count\",status=\"418\"} 1"
        ));
        assert!(text.contains(
            "edge_http_requests_total{method=\"POST\",route=\"t-count\",status=\"1000\"} 1"
        ));
        assert!(text.contains("edge_http_requests_in_flight{route=\"t-count\"} 0"));
        assert!(text.contains("edge_http_response_body_bytes_total{route=\"t-count\"} 10"));
        assert!(text.contains(
            "edge_http_request_duration_seconds_bucket{method=\"GET\",route=\"t-count\",status=\"200\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "edge_http_request_duration_seconds_bucket{method=\"GET\",route=\"t-count\",status=\"200\",le=\"1800\"} 1"
        ));
    }

    #[test]
    fn methods_fold_to_a_fixed_set() {
        let propfind = Method::from_bytes(b"PROPFIND").expect("method");
        assert_eq!(MethodLabel::of(&propfind).as_str(), "OTHER");
        assert_eq!(MethodLabel::of(&propfind).semconv(), "_OTHER");
        assert_eq!(MethodLabel::of(&Method::PATCH).semconv(), "PATCH");
    }

    #[test]
    fn a_route_names_its_spans() {
        use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoKind, Span};
        use prost::Message;
        let route = route("t-span");
        let span = Span::decode(route.span_naming(MethodLabel::Post)).expect("span fields");
        assert_eq!(span.name, "POST t-span");
        assert_eq!(span.kind, ProtoKind::Server as i32);
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={:?}", kv.key, kv.value))
            .collect();
        assert_eq!(attributes.len(), 2);
        assert!(
            attributes[0].starts_with("http.request.method=") && attributes[0].contains("\"POST\"")
        );
        assert!(attributes[1].starts_with("http.route=") && attributes[1].contains("\"t-span\""));
    }

    #[test]
    fn handles_are_shared_per_name() {
        assert!(Arc::ptr_eq(&route("t-shared"), &route("t-shared")));
        assert!(Arc::ptr_eq(&upstream("t-shared"), &upstream("t-shared")));
        let peer: SocketAddr = "10.0.0.7:8080".parse().expect("addr");
        let name = upstream("t-shared").peer_name(peer);
        assert_eq!(&*name, "10.0.0.7:8080");
        assert!(Arc::ptr_eq(&name, &upstream("t-shared").peer_name(peer)));
    }

    #[test]
    fn sse_guard_counts_while_alive() {
        let line = "edge_sse_streams_active{route=\"t-sse\"}";
        let a = sse_stream_opened("t-sse");
        let b = sse_stream_opened("t-sse");
        assert!(scrape().contains(&format!("{line} 2")));
        drop(a);
        assert!(scrape().contains(&format!("{line} 1")));
        drop(b);
        assert!(scrape().contains(&format!("{line} 0")));
    }

    #[test]
    fn upstream_failures_are_labelled_by_status() {
        let u = upstream("t-up");
        u.record(502, 0.001);
        u.record(504, 30.0);
        u.record(200, 0.01);
        let text = scrape();
        assert!(text.contains("edge_upstream_requests_total{status=\"502\",upstream=\"t-up\"} 1"));
        assert!(text.contains("edge_upstream_requests_total{status=\"504\",upstream=\"t-up\"} 1"));
        assert!(text.contains("edge_upstream_duration_seconds_count{upstream=\"t-up\"} 3"));
    }
}
